// `kvpr gen-model` and `kvpr demo`: the newcomer's path. The demo generates a real-shaped model
// once, runs the same prompts through every policy and shows what each one moved and how fast it
// was, and that all of them produced the same tokens.
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/worker/generator.h"
#include "report.h"

namespace kvpr::cli {

int gen_model_command(const GenModelOptions& options) {
  ModelConfig config = modelgen::preset(options.preset);
  const std::string arch(to_string(config.arch));
  if (options.arch != "opt" && options.arch != "llama") {
    fail("--arch must be opt or llama, got '", options.arch, "'");
  }
  if (arch != options.arch) fail("preset '", options.preset, "' is ", arch, ", not ", options.arch);
  if (!options.dtype.empty() && !parse_torch_dtype(options.dtype, config.dtype)) {
    fail("--dtype must be float32, float16 or bfloat16, got '", options.dtype, "'");
  }
  if (options.layers < 0) fail("--layers must be positive, got ", options.layers);
  if (options.layers > 0) config.n_layers = options.layers;
  modelgen::GenOptions gen;
  gen.config = config;
  gen.out = options.out;
  gen.seed = options.seed;
  Progress progress(str("writing ", options.out), 0, !options.quiet);
  gen.progress = [&](std::uint64_t done, std::uint64_t total) {
    (void)total;
    progress.update(done);
  };
  modelgen::generate_model(gen);
  progress.finish();
  std::printf(
      "%s: %s-shaped %s checkpoint, %lld layers, h %lld, %lld heads (%lld kv), vocab %lld, %s\n",
      options.out.c_str(), options.preset.c_str(), arch.c_str(),
      static_cast<long long>(config.n_layers), static_cast<long long>(config.h),
      static_cast<long long>(config.n_heads), static_cast<long long>(config.n_kv_heads),
      static_cast<long long>(config.vocab), std::string(torch_name(config.dtype)).c_str());
  return 0;
}

int demo_command(const DemoOptions& options) {
  const std::filesystem::path dir = options.dir;
  if (!std::filesystem::exists(dir / "config.json")) {
    GenModelOptions gen;
    gen.preset = options.preset;
    gen.arch = std::string(to_string(modelgen::preset(options.preset).arch));
    gen.out = options.dir;
    gen.dtype = "float16";
    gen_model_command(gen);
  }
  const std::vector<std::string> prompts = {
      "kvpr keeps the KV cache in host memory and recomputes part of it on the device while the "
      "rest streams over the link, so long contexts decode faster than with transfer alone.",
      "Partial recomputation trades link time for compute time."};
  std::printf("\nkvpr demo: %s, backend %s%s; %zu prompts, %lld new tokens each\n",
              options.dir.c_str(), options.backend.backend.c_str(),
              options.backend.emulate_link_gbps > 0
                  ? str(", emulated link ", options.backend.emulate_link_gbps, " GB/s").c_str()
                  : "",
              prompts.size(), static_cast<long long>(options.max_new_tokens));
  std::printf(
      "(random weights: the text is noise; the point is that every policy yields the same "
      "tokens)\n\n");
  std::vector<std::vector<std::int32_t>> reference;
  bool all_same = true;
  std::printf("%-10s %-8s %10s %9s  %s\n", "policy", "split", "tokens/s", "K,V rows",
              "per decode step (ms)");
  for (const char* name : {"resident", "transfer", "recompute", "kvpr"}) {
    const auto policy = planner::parse_policy(name);
    Embedded e(options.dir, options.backend, policy, std::nullopt, 8ull << 30, false);
    const ModelConfig& c = e.checkpoint.config();
    auto tokenizer = load_tokenizer(dir);
    worker::GenerateRequest request;
    request.max_new_tokens = options.max_new_tokens;
    for (const auto& p : prompts) {
      std::vector<std::int32_t> ids;
      if (c.bos_token_id >= 0) ids.push_back(c.bos_token_id);
      for (auto id : tokenizer->encode(p)) ids.push_back(id);
      request.prompts.push_back(std::move(ids));
    }
    const auto r = worker::generate(*e.engine, request);
    std::vector<std::vector<std::int32_t>> tokens;
    for (const auto& s : r.sequences) tokens.push_back(s.tokens);
    if (reference.empty()) {
      reference = tokens;
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::printf("  [%zu] %s\n", i, nlohmann::json(tokenizer->decode(tokens[i])).dump().c_str());
      }
    }
    const bool same = tokens == reference;
    all_same = all_same && same;
    std::string split =
        policy == planner::Policy::kvpr ? nlohmann::json(r.last_plan.l).dump() : "-";
    std::printf("%-10s %-8s %10.1f %4lld/%-4lld  %s%s\n", name, split.c_str(),
                r.decode_tokens_per_s(), static_cast<long long>(r.recompute_tokens),
                static_cast<long long>(r.transfer_tokens), phase_summary(r).c_str(),
                same ? "" : "  TOKENS DIFFER");
  }
  std::printf("\nK,V rows = rows recomputed / rows transferred over the whole run.\n");
  std::printf("%s\n", all_same ? "every policy produced the same tokens"
                               : "POLICIES DISAGREE: this is a bug");
  return all_same ? 0 : 1;
}

}  // namespace kvpr::cli
