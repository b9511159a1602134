// `kvpr`: flag parsing only; the commands live in their own files. Every error ends in one line on
// stderr and a non-zero exit code.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "commands.h"
#include "kvpr/common/error.h"

namespace {

void add_backend_flags(CLI::App* app, kvpr::cli::BackendFlags& flags) {
  app->add_option("--backend", flags.backend, "Kernel backend: cpu or cuda");
  app->add_option("--emulate-link-gbps", flags.emulate_link_gbps,
                  "CPU backend: throttle host<->device copies to this many GB/s (0 = off)");
  app->add_option("--emulate-link-latency-us", flags.emulate_link_latency_us,
                  "CPU backend: latency added to every copy, in microseconds");
  app->add_option("--threads", flags.threads, "Compute threads (0 = backend default)");
}

// One line whatever the message holds.
void report(std::string_view kind, std::string message) {
  for (char& ch : message) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::fprintf(stderr, "kvpr: %.*s: %s\n", static_cast<int>(kind.size()), kind.data(), message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvpr: LLM decoding with a host-resident KV cache and partial recomputation"};
  app.require_subcommand(1);

  kvpr::cli::RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "Generate with the embedded services (store, planner, engine)");
  run_cmd->add_option("--model", run.model, "Checkpoint directory (config.json + safetensors)")->required();
  auto* prompt = run_cmd->add_option("--prompt", run.prompts, "Prompt text; repeat for a batch");
  auto* tokens = run_cmd->add_option("--prompt-tokens", run.prompt_tokens,
                                     "Prompt token ids, e.g. 2,31,45; repeat for a batch");
  prompt->excludes(tokens);
  run_cmd->add_option("--max-new-tokens", run.max_new_tokens, "Tokens to generate per sequence");
  run_cmd->add_option("--policy", run.policy, "resident, transfer, recompute or kvpr");
  run_cmd->add_option("--split", run.split, "Tokens recomputed from activations: N or auto");
  run_cmd->add_option("--logits-out", run.logits_out, "Write the logits of every generated token (.npy)");
  run_cmd->add_flag("--json", run.json, "Print one JSON object");
  run_cmd->add_option("--kv-capacity", run.capacity_bytes, "Host KV store capacity in bytes");
  run_cmd->add_flag("--quiet", run.quiet, "No progress output");
  add_backend_flags(run_cmd, run.backend);

  kvpr::cli::GenModelOptions gen;
  auto* gen_cmd = app.add_subcommand("gen-model", "Write a checkpoint with a real model's shape and random weights");
  gen_cmd->add_option("--arch", gen.arch, "opt or llama")->required();
  gen_cmd->add_option("--preset", gen.preset, "Shape preset, e.g. opt-125m, llama2-7b")->required();
  gen_cmd->add_option("--out", gen.out, "Output directory")->required();
  gen_cmd->add_option("--dtype", gen.dtype, "float32, float16 or bfloat16");
  gen_cmd->add_option("--seed", gen.seed, "Random seed");
  gen_cmd->add_option("--layers", gen.layers, "Cut the depth to N layers");
  gen_cmd->add_flag("--quiet", gen.quiet, "No progress output");

  kvpr::cli::DemoOptions demo;
  auto* demo_cmd = app.add_subcommand("demo", "Generate a model and run every policy on it");
  demo_cmd->add_option("--dir", demo.dir, "Where the generated model lives");
  demo_cmd->add_option("--preset", demo.preset, "Shape preset");
  demo_cmd->add_option("--max-new-tokens", demo.max_new_tokens, "Tokens to generate");
  add_backend_flags(demo_cmd, demo.backend);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "kvpr: %s\n", e.what());
    return 1;
  }
  try {
    if (run_cmd->parsed()) return kvpr::cli::run_command(run);
    if (gen_cmd->parsed()) return kvpr::cli::gen_model_command(gen);
    if (demo_cmd->parsed()) return kvpr::cli::demo_command(demo);
  } catch (const kvpr::Error& e) {
    report(kvpr::to_string(e.kind()), e.what());
    return 1;
  } catch (const std::exception& e) {
    report("failed", e.what());
    return 1;
  }
  return 1;
}
