// Every policy and every split gives the logits of keeping all K,V on the device: batches of mixed
// context lengths, several decode steps, on the golden checkpoints and on generated configurations
// the golden set lacks (grouped-query attention, post-LN OPT with project_in/out, tied LLaMA head,
// fp16 and bf16 storage, other widths).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

using testing::max_abs_diff;
using testing::Stack;

struct ModelCase {
  std::string name;
  std::string dir;
  float tol;
};

std::filesystem::path generated_root() {
  static const auto root = [] {
    auto p =
        std::filesystem::temp_directory_path() / ("kvpr-policy-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    return p;
  }();
  return root;
}

std::string generate(const std::string& name, ModelConfig config, std::uint64_t seed) {
  modelgen::GenOptions options;
  options.config = config;
  options.out = generated_root() / name;
  options.seed = seed;
  options.write_tokenizer = false;
  modelgen::generate_model(options);
  return options.out.string();
}

std::vector<ModelCase> model_cases() {
  const std::string golden = std::string(KVPR_TEST_DATA) + "/golden/models/";
  std::vector<ModelCase> cases = {
      {"golden-opt", golden + "opt-2l-h64", 1e-5f},
      {"golden-opt-fp16", golden + "opt-2l-h64-fp16", 1e-2f},
      {"golden-llama", golden + "llama-2l-h64-mha", 1e-5f},
  };
  ModelConfig gqa = modelgen::preset("llama-tiny-gqa");
  cases.push_back({"llama-gqa", generate("llama-gqa", gqa, 11), 1e-5f});
  ModelConfig tied = modelgen::preset("llama-tiny");
  tied.tie_word_embeddings = true;
  tied.n_layers = 3;
  tied.dtype = DType::bf16;
  cases.push_back({"llama-tied-bf16", generate("llama-tied-bf16", tied, 12), 5e-2f});
  ModelConfig post = modelgen::preset("opt-tiny");
  post.pre_layer_norm = false;
  post.final_layer_norm = false;
  post.word_embed_proj_dim = 32;
  post.dtype = DType::f16;
  cases.push_back({"opt-postln-proj-fp16", generate("opt-postln-proj-fp16", post, 13), 1e-2f});
  ModelConfig wide = modelgen::preset("opt-tiny");
  wide.h = 96;
  wide.n_heads = 3;
  wide.head_dim = 32;
  wide.activation = Activation::gelu;
  cases.push_back({"opt-wide-gelu", generate("opt-wide-gelu", wide, 14), 1e-5f});
  return cases;
}

std::vector<std::vector<std::int32_t>> prompts(std::int64_t vocab) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int32_t> id(3, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::vector<std::int32_t>> out;
  for (int n : {5, 33, 18}) {  // mixed lengths, across 16-token store blocks
    std::vector<std::int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(id(rng));
    out.push_back(p);
  }
  return out;
}

// Logits of `steps` decode steps of a batch (one row block per step), feeding argmax tokens of
// the resident run so every run sees the same inputs.
std::vector<std::vector<float>> run(Stack& stack, const std::vector<std::vector<std::int32_t>>& ps,
                                    std::vector<std::vector<std::int32_t>>& feed, int steps) {
  std::vector<SeqHandle> seqs;
  std::vector<float> logits;
  std::vector<std::vector<float>> out;
  const bool record = feed.empty();
  std::vector<std::int32_t> next;
  for (const auto& p : ps) {
    seqs.push_back(stack.engine->prefill(p, logits));
    next.push_back(0);
  }
  for (int step = 0; step < steps; ++step) {
    if (record) {
      std::vector<std::int32_t> tokens;
      for (std::size_t i = 0; i < seqs.size(); ++i)
        tokens.push_back(static_cast<std::int32_t>((step * 31 + i * 7) % 50 + 3));
      feed.push_back(tokens);
    }
    out.push_back(stack.engine->decode(seqs, feed[static_cast<std::size_t>(step)]));
  }
  for (auto s : seqs) stack.engine->release(s);
  return out;
}

TEST(PolicyEquivalence, EveryPolicyAndSplitMatchesResident) {
  constexpr int kSteps = 3;
  for (const auto& m : model_cases()) {
    SCOPED_TRACE(m.name);
    std::vector<std::vector<std::int32_t>> feed;
    Stack base(m.dir, planner::Policy::resident, std::nullopt);
    const auto ps = prompts(base.checkpoint.config().vocab);
    const auto reference = run(base, ps, feed, kSteps);
    const std::int64_t s = 33;  // the longest prompt
    struct Variant {
      planner::Policy policy;
      std::optional<std::int64_t> split;
    };
    std::vector<Variant> variants = {{planner::Policy::transfer, std::nullopt},
                                     {planner::Policy::recompute, std::nullopt},
                                     {planner::Policy::kvpr, std::nullopt}};
    for (std::int64_t l : {std::int64_t{0}, std::int64_t{1}, s / 2, s - 1, s, s + 40}) {
      variants.push_back({planner::Policy::kvpr, l});
    }
    float worst = 0;
    for (const auto& v : variants) {
      SCOPED_TRACE(std::string(planner::to_string(v.policy)) + " split " +
                   (v.split ? std::to_string(*v.split) : "auto"));
      Stack stack(m.dir, v.policy, v.split);
      const auto got = run(stack, ps, feed, kSteps);
      for (int step = 0; step < kSteps; ++step) {
        const auto& a = got[static_cast<std::size_t>(step)];
        const auto& b = reference[static_cast<std::size_t>(step)];
        ASSERT_EQ(a.size(), b.size());
        const float d = max_abs_diff(a.data(), b.data(), a.size());
        EXPECT_LE(d, m.tol) << "step " << step;
        worst = std::max(worst, d);
      }
      EXPECT_EQ(stack.store->stats().used_bytes, 0u);
    }
    std::printf("[policy %s] worst |logits - resident| = %.3g (tolerance %.0e)\n", m.name.c_str(),
                worst, m.tol);
  }
  std::filesystem::remove_all(generated_root());
}

TEST(PolicyEquivalence, StepStatsCountRecomputedAndTransferredRows) {
  const std::string dir = std::string(KVPR_TEST_DATA) + "/golden/models/llama-2l-h64-mha";
  Stack stack(dir, planner::Policy::kvpr, 4);
  std::vector<float> logits;
  const std::vector<std::int32_t> a = {1, 5, 9, 14, 20, 3, 7}, b = {1, 8};
  const SeqHandle seqs[] = {stack.engine->prefill(a, logits), stack.engine->prefill(b, logits)};
  const std::int32_t tokens[] = {4, 4};
  stack.engine->decode(seqs, tokens);
  const auto& st = stack.engine->last_step();
  // l = min(4, s): 4 + 2 rows recomputed, 3 + 0 fetched, in each of 2 layers.
  EXPECT_EQ(st.recompute_tokens, 12);
  EXPECT_EQ(st.transfer_tokens, 6);
  EXPECT_EQ(st.plan.l, (std::vector<std::int64_t>{4, 2}));
  EXPECT_GT(st.h2d_bytes, 0u);
  EXPECT_GT(st.d2h_bytes, 0u);
  EXPECT_GT(st.times.total, 0.0);
}

TEST(PolicyEquivalence, FullStoreFailsTheStepWithoutLosingData) {
  const std::string dir = std::string(KVPR_TEST_DATA) + "/golden/models/opt-2l-h64";
  // Capacity for exactly one 16-token block per layer.
  Stack stack(dir, planner::Policy::kvpr, std::nullopt, 2 * 16 * (64 + 2 * 64) * 4);
  std::vector<float> logits;
  std::vector<std::int32_t> prompt(16, 5);
  prompt[0] = 2;
  const SeqHandle seq = stack.engine->prefill(prompt, logits);
  const SeqHandle seqs[] = {seq};
  const std::int32_t tok[] = {7};
  try {
    stack.engine->decode(seqs, tok);
    FAIL() << "decode past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
  }
  EXPECT_EQ(stack.engine->length(seq), 16);  // nothing committed, nothing lost
  EXPECT_THROW(stack.engine->prefill(prompt, logits), Error);
  EXPECT_EQ(stack.store->stats().sequences, 1u);  // the failed prefill left nothing behind
}

}  // namespace
}  // namespace kvpr::worker
