// The engine against Hugging Face transformers' outputs (tests/data/golden): prefill logits,
// teacher-forced decode logits, greedy tokens, stored activations and K,V, and K,V recomputed from
// activations, under every policy.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvpr/common/npy.h"
#include "kvpr/worker/generator.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

using testing::max_abs_diff;
using testing::Stack;

const std::string kGolden = std::string(KVPR_TEST_DATA) + "/golden/";

struct Case {
  std::string id;
  std::string model_dir;
  std::string dir;
  bool fp16 = false;
  std::vector<double> margins;
};

std::vector<Case> load_cases() {
  std::ifstream in(kGolden + "manifest.json");
  const auto manifest = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const auto& c : manifest["cases"]) {
    Case k;
    k.id = c["id"].get<std::string>();
    k.model_dir = kGolden + c["model_dir"].get<std::string>();
    k.dir = kGolden + "cases/" + k.id + "/";
    k.fp16 = c["weights_dtype"].get<std::string>() == "float16";
    k.margins = c["decode_top1_top2_margins"].get<std::vector<double>>();
    cases.push_back(k);
  }
  return cases;
}

// [layers, kv_heads, n, head_dim] → layer `layer` as rows [n, kv_heads·head_dim].
std::vector<float> cache_rows(const NpyArray& a, std::int64_t layer, std::int64_t n) {
  const auto heads = a.shape[1];
  const auto total_n = a.shape[2];
  const auto d = a.shape[3];
  std::vector<float> rows(static_cast<std::size_t>(n * heads * d));
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t hd = 0; hd < heads; ++hd) {
      for (std::int64_t i = 0; i < d; ++i) {
        rows[static_cast<std::size_t>((t * heads + hd) * d + i)] =
            a.f32[static_cast<std::size_t>(((layer * heads + hd) * total_n + t) * d + i)];
      }
    }
  }
  return rows;
}

struct GoldenParam {
  planner::Policy policy;
  std::optional<std::int64_t> split;
  std::string name;
};

class Golden : public ::testing::TestWithParam<GoldenParam> {};

std::string param_name(const ::testing::TestParamInfo<GoldenParam>& p) {
  return p.param.name;
}

TEST_P(Golden, MatchesReference) {
  const auto cases = load_cases();
  ASSERT_EQ(cases.size(), 9u);
  float worst_logit = 0, worst_logit16 = 0, worst_kv = 0, worst_recomputed = 0, worst_act = 0;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.id);
    Stack stack(k.model_dir, GetParam().policy, GetParam().split);
    const auto& c = stack.checkpoint.config();
    const float logit_tol = k.fp16 ? 1e-2f : 1e-4f;
    const auto prompt = read_npy(k.dir + "prompt.npy");
    const auto prefill_ref = read_npy(k.dir + "prefill_logits.npy");
    const auto decode_tokens = read_npy(k.dir + "decode_tokens.npy");
    const auto decode_ref = read_npy(k.dir + "decode_logits.npy");
    const std::vector<std::int32_t> ids(prompt.i64.begin(), prompt.i64.end());
    const auto n = static_cast<std::int64_t>(ids.size());

    std::vector<float> logits;
    const SeqHandle seq = stack.engine->prefill(ids, logits, true);
    ASSERT_EQ(logits.size(), prefill_ref.f32.size());
    const float d_prefill = max_abs_diff(logits.data(), prefill_ref.f32.data(), logits.size());
    EXPECT_LE(d_prefill, logit_tol);
    (k.fp16 ? worst_logit16 : worst_logit) =
        std::max(k.fp16 ? worst_logit16 : worst_logit, d_prefill);

    if (!k.fp16) {
      const auto k_ref = read_npy(k.dir + "k_cache.npy");
      const auto v_ref = read_npy(k.dir + "v_cache.npy");
      const auto act_ref = read_npy(k.dir + "attn_input.npy");
      for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
        const auto kr = cache_rows(k_ref, layer, n);
        const auto vr = cache_rows(v_ref, layer, n);
        const auto ks = stack.stored(seq, layer, kvstore::Part::k, n);
        const auto vs = stack.stored(seq, layer, kvstore::Part::v, n);
        const auto as = stack.stored(seq, layer, kvstore::Part::act, n);
        const float dk = std::max(max_abs_diff(ks.data(), kr.data(), kr.size()),
                                  max_abs_diff(vs.data(), vr.data(), vr.size()));
        const float da = max_abs_diff(as.data(), act_ref.f32.data() + layer * n * c.h, as.size());
        EXPECT_LE(dk, 1e-5f) << "layer " << layer;
        EXPECT_LE(da, 1e-5f) << "layer " << layer;
        worst_kv = std::max(worst_kv, dk);
        worst_act = std::max(worst_act, da);
        // K,V rebuilt from the stored activations (all n tokens recomputed), and half of them.
        for (std::int64_t l : {n, n / 2}) {
          std::vector<float> rk, rv;
          stack.engine->materialize_kv(seq, layer, l, rk, rv);
          const float dr = std::max(max_abs_diff(rk.data(), kr.data(), kr.size()),
                                    max_abs_diff(rv.data(), vr.data(), vr.size()));
          EXPECT_LE(dr, 1e-5f) << "layer " << layer << " l " << l;
          worst_recomputed = std::max(worst_recomputed, dr);
        }
      }
    }

    // Teacher-forced decode: feed the reference tokens, compare every logits row.
    const auto vocab = c.vocab;
    bool on_path = true;
    for (std::size_t i = 0; i < decode_tokens.i64.size(); ++i) {
      if (i > 0) {
        const SeqHandle seqs[] = {seq};
        const std::int32_t tok[] = {static_cast<std::int32_t>(decode_tokens.i64[i - 1])};
        logits = stack.engine->decode(seqs, tok);
      } else {
        logits.assign(logits.end() - vocab, logits.end());
      }
      const float* ref = decode_ref.f32.data() + static_cast<std::ptrdiff_t>(i) * vocab;
      const float d = max_abs_diff(logits.data(), ref, static_cast<std::size_t>(vocab));
      EXPECT_LE(d, logit_tol) << "decode row " << i;
      (k.fp16 ? worst_logit16 : worst_logit) = std::max(k.fp16 ? worst_logit16 : worst_logit, d);
      if (k.fp16 && k.margins[i] < 0.05) on_path = false;  // the reference's own margin is noise
      if (on_path) {
        EXPECT_EQ(greedy(logits.data(), vocab), decode_tokens.i64[i]) << "greedy token " << i;
      }
    }
    if (!k.fp16) {
      const auto k_fin = read_npy(k.dir + "k_cache_final.npy");
      const auto v_fin = read_npy(k.dir + "v_cache_final.npy");
      const std::int64_t total = n + 23;
      ASSERT_EQ(stack.engine->length(seq), total);
      for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
        const auto kr = cache_rows(k_fin, layer, total);
        const auto vr = cache_rows(v_fin, layer, total);
        const auto ks = stack.stored(seq, layer, kvstore::Part::k, total);
        const auto vs = stack.stored(seq, layer, kvstore::Part::v, total);
        EXPECT_LE(max_abs_diff(ks.data(), kr.data(), kr.size()), 1e-4f);
        EXPECT_LE(max_abs_diff(vs.data(), vr.data(), vr.size()), 1e-4f);
      }
    }
    stack.engine->release(seq);
    EXPECT_EQ(stack.store->stats().used_bytes, 0u);
  }
  std::printf(
      "[golden %s] worst |logits diff| fp32 %.3g fp16 %.3g, |K,V diff| %.3g, |attn_input diff| "
      "%.3g, "
      "|recomputed K,V diff| %.3g\n",
      GetParam().name.c_str(), worst_logit, worst_logit16, worst_kv, worst_act, worst_recomputed);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, Golden,
    ::testing::Values(GoldenParam{planner::Policy::resident, std::nullopt, "resident"},
                      GoldenParam{planner::Policy::transfer, std::nullopt, "transfer"},
                      GoldenParam{planner::Policy::recompute, std::nullopt, "recompute"},
                      GoldenParam{planner::Policy::kvpr, 7, "kvpr_split7"},
                      GoldenParam{planner::Policy::kvpr, std::nullopt, "kvpr_auto"}),
    param_name);

// Free-running greedy generation reproduces the reference tokens on the fp32 models.
TEST(GoldenGenerate, GreedyTokensMatch) {
  for (const auto& k : load_cases()) {
    if (k.fp16) continue;
    SCOPED_TRACE(k.id);
    Stack stack(k.model_dir, planner::Policy::kvpr, std::nullopt);
    const auto prompt = read_npy(k.dir + "prompt.npy");
    const auto tokens = read_npy(k.dir + "decode_tokens.npy");
    GenerateRequest request;
    request.prompts = {std::vector<std::int32_t>(prompt.i64.begin(), prompt.i64.end())};
    request.max_new_tokens = static_cast<std::int64_t>(tokens.i64.size());
    const auto result = generate(*stack.engine, request);
    EXPECT_EQ(std::vector<std::int64_t>(result.sequences[0].tokens.begin(),
                                        result.sequences[0].tokens.end()),
              tokens.i64);
    EXPECT_EQ(stack.store->stats().used_bytes, 0u);  // released
  }
}

}  // namespace
}  // namespace kvpr::worker
