// The golden cases (tests/data/golden: Hugging Face transformers' outputs) on the CUDA backend:
// prefill logits, teacher-forced decode logits, greedy tokens, the activations and K,V written to
// the host store, and K,V recomputed from stored activations, under every policy. With fp32
// compute (cuBLAS without TF32) the fp32 cases must match within 1e-4, as the issue asks; the
// fp16-weight case within 1e-2, as on the CPU. A second test runs the engine in fp16 and bf16
// compute and states its tolerances (teacher-forced logits; greedy tokens where the reference's
// top-1/top-2 margin exceeds twice the tolerance). Without a usable CUDA device every case skips.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cuda_stack.h"
#include "cuda_test_util.h"
#include "kvpr/common/npy.h"
#include "kvpr/worker/generator.h"

namespace kvpr::worker {
namespace {

using cuda_testing::CudaStack;
using cuda_testing::max_abs_diff;

const std::string kGolden = kernels::cuda_test::test_data_dir() + "/golden/";

struct Case {
  std::string id, model_dir, dir;
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
  const auto heads = a.shape[1], total_n = a.shape[2], d = a.shape[3];
  std::vector<float> rows(static_cast<std::size_t>(n * heads * d));
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t hd = 0; hd < heads; ++hd)
      for (std::int64_t i = 0; i < d; ++i)
        rows[static_cast<std::size_t>((t * heads + hd) * d + i)] =
            a.f32[static_cast<std::size_t>(((layer * heads + hd) * total_n + t) * d + i)];
  return rows;
}

struct GoldenParam {
  planner::Policy policy;
  std::optional<std::int64_t> split;
  std::string name;
};

void PrintTo(const GoldenParam& p, std::ostream* os) {
  *os << p.name;
}

class CudaGolden : public ::testing::TestWithParam<GoldenParam> {};

TEST_P(CudaGolden, Fp32MatchesReference) {
  KVPR_SKIP_WITHOUT_CUDA();
  constexpr float kTol = 1e-4f;
  float worst = 0, worst16 = 0, worst_kv = 0;
  for (const auto& k : load_cases()) {
    SCOPED_TRACE(k.id);
    CudaStack stack(k.model_dir, GetParam().policy, GetParam().split);
    const auto& c = stack.checkpoint.config();
    const float tol = k.fp16 ? 1e-2f : kTol;
    float& w = k.fp16 ? worst16 : worst;
    const auto prompt = read_npy(k.dir + "prompt.npy");
    const auto prefill_ref = read_npy(k.dir + "prefill_logits.npy");
    const auto decode_tokens = read_npy(k.dir + "decode_tokens.npy");
    const auto decode_ref = read_npy(k.dir + "decode_logits.npy");
    const std::vector<std::int32_t> ids(prompt.i64.begin(), prompt.i64.end());
    const auto n = static_cast<std::int64_t>(ids.size());

    std::vector<float> logits;
    const SeqHandle seq = stack.engine->prefill(ids, logits, true);
    ASSERT_EQ(logits.size(), prefill_ref.f32.size());
    const float dp = max_abs_diff(logits.data(), prefill_ref.f32.data(), logits.size());
    EXPECT_LE(dp, tol) << "prefill";
    w = std::max(w, dp);

    if (!k.fp16) {
      const auto k_ref = read_npy(k.dir + "k_cache.npy");
      const auto v_ref = read_npy(k.dir + "v_cache.npy");
      const auto act_ref = read_npy(k.dir + "attn_input.npy");
      for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
        const auto kr = cache_rows(k_ref, layer, n), vr = cache_rows(v_ref, layer, n);
        const auto ks = stack.stored(seq, layer, kvstore::Part::k, n);
        const auto vs = stack.stored(seq, layer, kvstore::Part::v, n);
        const auto as = stack.stored(seq, layer, kvstore::Part::act, n);
        const float dk = std::max(max_abs_diff(ks.data(), kr.data(), kr.size()),
                                  max_abs_diff(vs.data(), vr.data(), vr.size()));
        EXPECT_LE(dk, kTol) << "stored K,V, layer " << layer;
        EXPECT_LE(max_abs_diff(as.data(), act_ref.f32.data() + layer * n * c.h, as.size()), kTol)
            << "stored activations, layer " << layer;
        for (std::int64_t l : {n, n / 2}) {
          std::vector<float> rk, rv;
          stack.engine->materialize_kv(seq, layer, l, rk, rv);
          const float dr = std::max(max_abs_diff(rk.data(), kr.data(), kr.size()),
                                    max_abs_diff(rv.data(), vr.data(), vr.size()));
          EXPECT_LE(dr, kTol) << "recomputed K,V, layer " << layer << " l " << l;
          worst_kv = std::max({worst_kv, dk, dr});
        }
      }
    }

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
      EXPECT_LE(d, tol) << "decode row " << i;
      w = std::max(w, d);
      if (k.fp16 && k.margins[i] < 0.05) on_path = false;
      if (on_path) {
        EXPECT_EQ(greedy(logits.data(), vocab), decode_tokens.i64[i]) << "greedy " << i;
      }
    }
    stack.engine->release(seq);
  }
  std::printf("[cuda golden %s] worst |logits diff| fp32 %.3g fp16-weights %.3g, |K,V diff| %.3g\n",
              GetParam().name.c_str(), worst, worst16, worst_kv);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, CudaGolden,
    ::testing::Values(GoldenParam{planner::Policy::resident, std::nullopt, "resident"},
                      GoldenParam{planner::Policy::transfer, std::nullopt, "transfer"},
                      GoldenParam{planner::Policy::recompute, std::nullopt, "recompute"},
                      GoldenParam{planner::Policy::kvpr, 7, "kvpr_split7"},
                      GoldenParam{planner::Policy::kvpr, std::nullopt, "kvpr_auto"}),
    [](const auto& p) { return p.param.name; });

// Half-precision compute: weights, activations and K,V on the device in fp16/bf16, every GEMM
// and kernel accumulating in fp32. Stated tolerances on teacher-forced logits (|logit| ≤ ~7
// here): fp16 0.05, bf16 0.25 — chosen from the storage precision (2⁻¹¹ and 2⁻⁸ relative per
// rounding, a few dozen roundings deep), not yet confirmed on a device.
TEST(CudaGoldenHalf, TeacherForcedLogitsWithinStatedTolerance) {
  KVPR_SKIP_WITHOUT_CUDA();
  for (const auto& [dtype, tol] : {std::pair{DType::f16, 0.05f}, std::pair{DType::bf16, 0.25f}}) {
    for (const auto& k : load_cases()) {
      SCOPED_TRACE(std::string(safetensors_name(dtype)) + " " + k.id);
      CudaStack stack(k.model_dir, planner::Policy::kvpr, std::nullopt, dtype);
      const auto prompt = read_npy(k.dir + "prompt.npy");
      const auto decode_tokens = read_npy(k.dir + "decode_tokens.npy");
      const auto decode_ref = read_npy(k.dir + "decode_logits.npy");
      const std::vector<std::int32_t> ids(prompt.i64.begin(), prompt.i64.end());
      const auto vocab = stack.checkpoint.config().vocab;
      std::vector<float> logits;
      const SeqHandle seq = stack.engine->prefill(ids, logits);
      float worst = 0;
      for (std::size_t i = 0; i < decode_tokens.i64.size(); ++i) {
        if (i > 0) {
          const SeqHandle seqs[] = {seq};
          const std::int32_t tok[] = {static_cast<std::int32_t>(decode_tokens.i64[i - 1])};
          logits = stack.engine->decode(seqs, tok);
        }
        const float* ref = decode_ref.f32.data() + static_cast<std::ptrdiff_t>(i) * vocab;
        const float d = max_abs_diff(logits.data(), ref, static_cast<std::size_t>(vocab));
        EXPECT_LE(d, tol) << "decode row " << i;
        worst = std::max(worst, d);
        if (k.margins[i] > 2 * tol) {
          EXPECT_EQ(greedy(logits.data(), vocab), decode_tokens.i64[i]) << "greedy " << i;
        }
      }
      std::printf("[cuda golden %s %s] worst |logits diff| %.3g (tolerance %.2g)\n",
                  std::string(safetensors_name(dtype)).c_str(), k.id.c_str(), worst, tol);
      stack.engine->release(seq);
    }
  }
}

}  // namespace
}  // namespace kvpr::worker
