// The models, prompts and backend columns of the engine-equivalence suites (policy_test.cpp,
// throughput_test.cpp): every policy, split and schedule must give the logits of keeping all K,V
// on the device, on the golden checkpoints and on generated configurations the golden set lacks.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backends.h"
#include "kvpr/modelgen/gen_model.h"
#include "stack.h"

namespace kvpr::worker::testing {

// The backend rows of this suite; each is a column of model_cases()' tolerances.
inline const std::array<BackendCase, 3> kBackends = {BackendCase{"cpu", DType::f32},
                                                     BackendCase{"cuda", DType::f32},
                                                     BackendCase{"cuda", DType::f16}};

struct ModelCase {
  std::string name;
  // Makes the checkpoint (under `root` when generated) and returns its folder.
  std::function<std::string(const std::filesystem::path& root)> make;
  // Max |logits − resident| per backend row of kBackends; unset: not run there.
  std::array<std::optional<float>, kBackends.size()> tol;
};

inline std::string generate(const std::filesystem::path& root, const std::string& name,
                            ModelConfig config, std::uint64_t seed) {
  modelgen::GenOptions options;
  options.config = std::move(config);
  options.out = root / name;
  options.seed = seed;
  options.write_tokenizer = false;
  modelgen::generate_model(options);
  return options.out.string();
}

inline std::function<std::string(const std::filesystem::path&)> golden(const std::string& model) {
  return [model](const std::filesystem::path&) {
    return testing::test_data_dir() + "/golden/models/" + model;
  };
}

inline std::function<std::string(const std::filesystem::path&)> generated(
    const std::string& name, const std::string& preset, std::uint64_t seed,
    void (*edit)(ModelConfig&)) {
  return [=](const std::filesystem::path& root) {
    ModelConfig config = modelgen::preset(preset);
    edit(config);
    return generate(root, name, config, seed);
  };
}

// The configurations the golden set lacks, as edits of a modelgen preset.
inline void as_is(ModelConfig&) {}
inline void tied_bf16(ModelConfig& c) {
  c.tie_word_embeddings = true;
  c.n_layers = 3;
  c.dtype = DType::bf16;
}
inline void postln_proj_fp16(ModelConfig& c) {
  c.pre_layer_norm = false;
  c.final_layer_norm = false;
  c.word_embed_proj_dim = 32;
  c.dtype = DType::f16;
}
inline void wide_gelu(ModelConfig& c) {
  c.h = 96;
  c.n_heads = 3;
  c.head_dim = 32;
  c.activation = Activation::gelu;
}
inline void wide_gelu_fp16(ModelConfig& c) {
  wide_gelu(c);
  c.dtype = DType::f16;
}

// This suite's one table of tolerances: max |logits − resident| per model and backend row of
// kBackends; `no`: not run on that backend.
inline const std::vector<ModelCase>& model_cases() {
  // NOLINTNEXTLINE(readability-identifier-naming): a word of the table below, not a constant
  constexpr std::nullopt_t no = std::nullopt;
  // clang-format off
  static const std::vector<ModelCase> cases = {
      // name                  checkpoint                                                            cpu F32  cuda F32  cuda F16
      {"golden-opt",           golden("opt-2l-h64"),                                                 {1e-5f,  1e-4f,    no}},
      {"golden-opt-fp16",      golden("opt-2l-h64-fp16"),                                            {1e-2f,  1e-2f,    no}},
      {"golden-llama",         golden("llama-2l-h64-mha"),                                           {1e-5f,  1e-4f,    5e-2f}},
      {"llama-gqa",            generated("llama-gqa", "llama-tiny-gqa", 11, as_is),                  {1e-5f,  1e-4f,    no}},
      {"llama-tied-bf16",      generated("llama-tied-bf16", "llama-tiny", 12, tied_bf16),            {5e-2f,  no,       no}},
      {"opt-postln-proj-fp16", generated("opt-postln-proj-fp16", "opt-tiny", 13, postln_proj_fp16),  {1e-2f,  no,       no}},
      {"opt-wide-gelu",        generated("opt-wide-gelu", "opt-tiny", 14, wide_gelu),                {1e-5f,  no,       no}},
      {"opt-wide-gelu-fp16",   generated("opt-wide-gelu-fp16", "opt-tiny", 14, wide_gelu_fp16),      {no,     1e-2f,    no}},
  };
  // clang-format on
  return cases;
}

inline std::vector<std::vector<std::int32_t>> prompts(std::int64_t vocab) {
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
inline std::vector<std::vector<float>> run(Stack& stack,
                                           const std::vector<std::vector<std::int32_t>>& ps,
                                           std::vector<std::vector<std::int32_t>>& feed,
                                           int steps) {
  std::vector<SeqHandle> seqs;
  std::vector<float> logits;
  std::vector<std::vector<float>> out;
  const bool record = feed.empty();
  for (const auto& p : ps) seqs.push_back(stack.engine->prefill(p, logits));
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

// A backend row of kBackends, by index.
struct Column {
  std::size_t index = 0;
};

inline void PrintTo(const Column& c, std::ostream* os) {
  *os << kBackends[c.index].label();
}

inline std::vector<Column> registered_columns() {
  std::vector<Column> out;
  for (std::size_t i = 0; i < kBackends.size(); ++i) {
    if (testing::registered(kBackends[i].name)) out.push_back({i});
  }
  return out;
}

inline std::string column_name(const ::testing::TestParamInfo<Column>& p) {
  return kBackends[p.param.index].label();
}

// Every step's logits within `tol` of the reference run's (a step's logits differ in size: a
// failure, skipped); returns the worst difference.
inline float expect_steps_within(const std::vector<std::vector<float>>& got,
                                 const std::vector<std::vector<float>>& reference, float tol) {
  float worst = 0;
  EXPECT_EQ(got.size(), reference.size());
  for (std::size_t step = 0; step < std::min(got.size(), reference.size()); ++step) {
    const auto& a = got[step];
    const auto& b = reference[step];
    EXPECT_EQ(a.size(), b.size()) << "step " << step;
    if (a.size() != b.size()) continue;
    const float d = max_abs_diff(a.data(), b.data(), a.size());
    EXPECT_LE(d, tol) << "step " << step;
    worst = std::max(worst, d);
  }
  return worst;
}

}  // namespace kvpr::worker::testing
