// Every policy and every split gives the logits of `resident` on the CUDA backend: a batch of
// mixed context lengths across store blocks, several decode steps, on golden and generated models
// (grouped-query LLaMA, fp16 storage, GELU OPT), with fp32 compute; and the same for fp16 compute
// on one model, within fp16's tolerance. Without a usable CUDA device every case skips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "cuda_stack.h"
#include "cuda_test_util.h"
#include "kvpr/modelgen/gen_model.h"

namespace kvpr::worker {
namespace {

using cuda_testing::CudaStack;
using cuda_testing::max_abs_diff;

std::filesystem::path generated_root() {
  static const auto root = [] {
    auto p = std::filesystem::temp_directory_path() /
             ("kvpr-cuda-policy-test-" + std::to_string(::getpid()));
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

struct ModelCase {
  std::string name, dir;
  DType compute;
  float tol;
};

std::vector<ModelCase> model_cases() {
  const std::string golden = kernels::cuda_test::test_data_dir() + "/golden/models/";
  std::vector<ModelCase> cases = {
      {"golden-opt", golden + "opt-2l-h64", DType::f32, 1e-4f},
      {"golden-opt-fp16-store", golden + "opt-2l-h64-fp16", DType::f32, 1e-2f},
      {"golden-llama", golden + "llama-2l-h64-mha", DType::f32, 1e-4f},
      {"golden-llama-f16-compute", golden + "llama-2l-h64-mha", DType::f16, 5e-2f},
  };
  cases.push_back({"llama-gqa", generate("llama-gqa", modelgen::preset("llama-tiny-gqa"), 11),
                   DType::f32, 1e-4f});
  ModelConfig wide = modelgen::preset("opt-tiny");
  wide.h = 96;
  wide.n_heads = 3;
  wide.head_dim = 32;
  wide.activation = Activation::gelu;
  wide.dtype = DType::f16;
  cases.push_back(
      {"opt-wide-gelu-fp16-store", generate("opt-wide-gelu", wide, 14), DType::f32, 1e-2f});
  return cases;
}

std::vector<std::vector<std::int32_t>> prompts(std::int64_t vocab) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int32_t> id(3, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::vector<std::int32_t>> out;
  for (int n : {5, 33, 18}) {
    std::vector<std::int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(id(rng));
    out.push_back(p);
  }
  return out;
}

std::vector<std::vector<float>> run(CudaStack& stack,
                                    const std::vector<std::vector<std::int32_t>>& ps, int steps) {
  std::vector<SeqHandle> seqs;
  std::vector<float> logits;
  for (const auto& p : ps) seqs.push_back(stack.engine->prefill(p, logits));
  std::vector<std::vector<float>> out;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::int32_t> tokens;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      tokens.push_back(static_cast<std::int32_t>((step * 31 + static_cast<int>(i) * 7) % 50 + 3));
    }
    out.push_back(stack.engine->decode(seqs, tokens));
  }
  for (auto s : seqs) stack.engine->release(s);
  return out;
}

TEST(CudaPolicyEquivalence, EveryPolicyAndSplitMatchesResident) {
  KVPR_SKIP_WITHOUT_CUDA();
  constexpr int kSteps = 3;
  for (const auto& m : model_cases()) {
    SCOPED_TRACE(m.name);
    CudaStack base(m.dir, planner::Policy::resident, std::nullopt, m.compute);
    const auto ps = prompts(base.checkpoint.config().vocab);
    const auto reference = run(base, ps, kSteps);
    struct Variant {
      planner::Policy policy;
      std::optional<std::int64_t> split;
    };
    std::vector<Variant> variants = {{planner::Policy::transfer, std::nullopt},
                                     {planner::Policy::recompute, std::nullopt},
                                     {planner::Policy::kvpr, std::nullopt}};
    for (std::int64_t l : {0, 1, 16, 32, 33, 73}) variants.push_back({planner::Policy::kvpr, l});
    float worst = 0;
    for (const auto& v : variants) {
      SCOPED_TRACE(std::string(planner::to_string(v.policy)) + " split " +
                   (v.split ? std::to_string(*v.split) : "auto"));
      CudaStack stack(m.dir, v.policy, v.split, m.compute);
      const auto got = run(stack, ps, kSteps);
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
    std::printf("[cuda policy %s] worst |logits - resident| = %.3g (tolerance %.0e)\n",
                m.name.c_str(), worst, m.tol);
  }
  std::filesystem::remove_all(generated_root());
}

}  // namespace
}  // namespace kvpr::worker
