// `kvpr`: flag parsing only; the commands live in their own files. Every error ends in one line on
// stderr and a non-zero exit code.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>

#include "commands.h"
#include "deploy.h"
#include "kvpr/common/error.h"
#include "kvpr/net/security.h"

namespace {

void add_backend_flags(CLI::App* app, kvpr::cli::BackendFlags& flags) {
  app->add_option("--backend", flags.backend, "Kernel backend: cpu or cuda");
  app->add_option("--emulate-link-gbps", flags.emulate_link_gbps,
                  "CPU backend: throttle host<->device copies to this many GB/s (0 = off)");
  app->add_option("--emulate-link-latency-us", flags.emulate_link_latency_us,
                  "CPU backend: latency added to every copy, in microseconds");
  app->add_option("--threads", flags.threads, "Compute threads (0 = backend default)");
  app->add_option("--compute-dtype", flags.compute_dtype,
                  "Dtype of device tensors: auto (a half-precision checkpoint's own on cuda, f32 "
                  "on cpu), f32, f16 or bf16");
}

void add_device_flags(CLI::App* app, kvpr::cli::DeviceFlags& flags) {
  app->add_option("--device-memory", flags.device_memory,
                  "Device memory the backend may use, in bytes (0 = the device's); weights that "
                  "do not fit stream from host memory");
  app->add_option("--weight-fraction", flags.weight_fraction,
                  "Share of each layer's weights kept on the device: 0..1, or auto (the most "
                  "that fits --device-memory)");
  app->add_option("--micro-batches", flags.micro_batches,
                  "Block schedule: each layer runs once per micro-batch while its weights are "
                  "loaded (1 = the latency schedule)");
}

// One line whatever the message holds.
void report(std::string_view kind, std::string message) {
  for (char& ch : message) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::fprintf(stderr, "kvpr: %.*s: %s\n", static_cast<int>(kind.size()), kind.data(),
               message.c_str());
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"kvpr: LLM decoding with a host-resident KV cache and partial recomputation"};
  app.require_subcommand(1);

  kvpr::cli::RunOptions run;
  auto* run_cmd =
      app.add_subcommand("run", "Generate with the embedded services (store, planner, engine)");
  run_cmd->add_option("--model", run.model, "Checkpoint directory (config.json + safetensors)")
      ->required();
  auto* prompt = run_cmd->add_option("--prompt", run.prompts, "Prompt text; repeat for a batch");
  auto* tokens = run_cmd->add_option("--prompt-tokens", run.prompt_tokens,
                                     "Prompt token ids, e.g. 2,31,45; repeat for a batch");
  prompt->excludes(tokens);
  run_cmd->add_option("--max-new-tokens", run.max_new_tokens, "Tokens to generate per sequence");
  run_cmd->add_option("--policy", run.policy, "resident, transfer, recompute or kvpr");
  run_cmd->add_option("--split", run.split,
                      "Tokens recomputed from activations: L or auto; L:M (or auto:M) also "
                      "attends over tokens [M, s) on the host (three-way split)");
  run_cmd->add_option("--host-threads", run.host_threads,
                      "Threads for host attention under --split L:M");
  run_cmd->add_option("--logits-out", run.logits_out,
                      "Write the logits of every generated token (.npy)");
  run_cmd->add_flag("--json", run.json, "Print one JSON object");
  run_cmd->add_option("--trace", run.trace,
                      "Write every decode step's copy and compute spans here (Chrome trace JSON)");
  run_cmd->add_option("--kv-capacity", run.capacity_bytes, "Host KV store capacity in bytes");
  run_cmd->add_flag("--quiet", run.quiet, "No progress output");
  run_cmd->add_option(
      "--planner", run.planner,
      "Split planner: nominal (backend's nominal rates) or measured (cached profile)");
  add_backend_flags(run_cmd, run.backend);
  add_device_flags(run_cmd, run.backend.device);
  run_cmd->add_option("--connect", run.connect,
                      "Run on a deployment: worker endpoint(s), comma-separated (see kvpr up)");
  run_cmd
      ->add_option("--keys", run.keys,
                   "--connect: the deployment's key folder (kvpr up makes RUN/keys)")
      ->envname("KVPR_KEYS");
  run_cmd->add_option("--timeout", run.timeout_s,
                      "--connect: seconds without any word from a worker before giving up");

  kvpr::cli::BatchOptions batch;
  auto* batch_cmd = app.add_subcommand(
      "batch", "Run a JSONL file of prompts through continuous batching, results to a JSONL file");
  batch_cmd->add_option("--model", batch.model, "Checkpoint directory")->required();
  batch_cmd
      ->add_option("--input", batch.input,
                   R"(One request per line: {"prompt": TEXT} or {"prompt_tokens": [IDS]} and )"
                   "the gateway's sampling fields")
      ->required();
  batch_cmd
      ->add_option("--output", batch.output,
                   "Results, one line per prompt as it finishes; prompts already here are skipped")
      ->required();
  batch_cmd->add_option("--max-new-tokens", batch.max_new_tokens,
                        "Tokens per prompt when its line gives no max_tokens");
  batch_cmd->add_option("--max-batch", batch.max_batch,
                        "Prompts in flight per worker (the embedded worker's batch)");
  batch_cmd->add_option("--on-bad-line", batch.on_bad_line,
                        "A malformed input line: skip (reported) or fail (before any work)");
  batch_cmd->add_option("--policy", batch.policy, "resident, transfer, recompute or kvpr");
  batch_cmd->add_option("--kv-capacity", batch.capacity_bytes, "Host KV store capacity in bytes");
  batch_cmd->add_option("--planner", batch.planner,
                        "Split planner of the embedded worker: nominal or measured (cached "
                        "profile; plans the host share too)");
  batch_cmd->add_option("--host-threads", batch.host_threads,
                        "Host-attention threads of the embedded worker");
  add_backend_flags(batch_cmd, batch.backend);
  add_device_flags(batch_cmd, batch.backend.device);
  batch_cmd->add_option("--connect", batch.connect,
                        "Run on a deployment: worker endpoint(s), comma-separated (see kvpr up)");
  batch_cmd
      ->add_option("--keys", batch.keys,
                   "--connect: the deployment's key folder (kvpr up makes RUN/keys)")
      ->envname("KVPR_KEYS");
  batch_cmd->add_flag("--quiet", batch.quiet, "No progress output");
  batch_cmd->add_flag("--json", batch.json, "Print the summary as one JSON object");

  kvpr::cli::ServeOptions serve;
  auto* serve_cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server: gateway, worker, store and planner in one process");
  serve_cmd->add_option("--model", serve.model, "Checkpoint directory (config.json + safetensors)")
      ->required();
  serve_cmd->add_option("--served-model-name", serve.served_name,
                        "The model name clients use (default: the checkpoint folder's name)");
  serve_cmd->add_option("--host", serve.host, "Address to listen on");
  serve_cmd->add_option("--port", serve.port, "HTTP port (0: a free one)");
  serve_cmd->add_option("--ready-file", serve.ready_file,
                        R"(Write {"http": "http://HOST:PORT"} here once serving)");
  serve_cmd->add_option("--api-key-file", serve.api_key_file,
                        "Accept only these API keys (one per line; Authorization: Bearer KEY)");
  serve_cmd->add_option("--tls-cert", serve.tls_cert, "Serve HTTPS with this PEM certificate");
  serve_cmd->add_option("--tls-key", serve.tls_key, "The PEM private key of --tls-cert");
  serve_cmd->add_flag("--insecure", serve.insecure,
                      "Serve beyond loopback without --api-key-file (say so on purpose)");
  serve_cmd->add_option("--policy", serve.policy, "resident, transfer, recompute or kvpr");
  serve_cmd->add_option("--planner", serve.planner, "Split planner: nominal or measured");
  serve_cmd->add_option("--kv-capacity", serve.capacity_bytes, "Host KV store capacity in bytes");
  serve_cmd->add_option("--max-batch", serve.max_batch, "Sequences decoded together");
  serve_cmd->add_option("--max-queue", serve.max_queue, "Requests that may wait");
  serve_cmd->add_option("--max-prefill-tokens-per-step", serve.max_prefill_tokens,
                        "Prompt tokens prefilled between two decode steps");
  serve_cmd->add_option("--admit", serve.admit,
                        "full (prompt + max_tokens must fit the KV store) or prompt");
  serve_cmd->add_flag("--quiet", serve.quiet, "No progress output");
  add_backend_flags(serve_cmd, serve.backend);

  kvpr::cli::GenModelOptions gen;
  auto* gen_cmd = app.add_subcommand(
      "gen-model", "Write a checkpoint with a real model's shape and random weights");
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

  kvpr::cli::ProfileOptions prof;
  auto* prof_cmd = app.add_subcommand("profile", "Measure (or show the cached) hardware profile");
  prof_cmd->add_option("--model", prof.model, "Checkpoint whose shape to profile");
  prof_cmd->add_option("--preset", prof.preset, "Shape preset when no --model");
  prof_cmd->add_flag("--json", prof.json, "Print the profile as JSON");
  prof_cmd->add_flag("--remeasure", prof.remeasure, "Ignore the cache and measure again");
  prof_cmd->add_flag("--quick", prof.quick, "Fewer, smaller measurements");
  prof_cmd->add_option("--out", prof.out, "Also write the profile to this file");
  add_backend_flags(prof_cmd, prof.backend);

  kvpr::cli::PlanOptions plan;
  auto* plan_cmd = app.add_subcommand("plan", "The scheduler's decision for a batch shape");
  plan_cmd->add_option("--model", plan.model, "Checkpoint directory")->required();
  plan_cmd->add_option("--batch", plan.batch, "Sequences in the batch");
  plan_cmd->add_option("--context", plan.context, "Context length of each sequence");
  plan_cmd->add_option("--workload", plan.workload, "latency or throughput");
  plan_cmd->add_option("--profile", plan.profile,
                       "Hardware profile file (default: measured, cached)");
  plan_cmd->add_option("--policy", plan.policy,
                       "Throughput workload: kvpr or transfer (FlexGen-style)");
  plan_cmd->add_option("--device-memory", plan.device_memory,
                       "Throughput workload: device memory budget, bytes");
  plan_cmd->add_flag("--json", plan.json, "Print one JSON object");
  add_backend_flags(plan_cmd, plan.backend);

  kvpr::cli::BenchOptions bench;
  auto* bench_cmd = app.add_subcommand(
      "bench", "Measure decode steps per policy and split beside the predictions");
  bench_cmd->add_option("--model", bench.model, "Checkpoint directory")->required();
  bench_cmd->add_option("--batch", bench.batch, "Sequences in the batch");
  bench_cmd->add_option("--context", bench.context, "Context length of each sequence");
  bench_cmd->add_flag("--sweep", bench.sweep, "Also sweep l across [0, s]");
  bench_cmd->add_option("--points", bench.points, "Sweep points (at least 9)");
  bench_cmd->add_option("--steps", bench.steps, "Measured decode steps per point");
  bench_cmd->add_option("--confirm", bench.confirm,
                        "Rounds re-measuring the chosen and the best point side by side");
  bench_cmd->add_option("--json", bench.json, "Write the results as JSON here");
  bench_cmd->add_option("--plot", bench.plot, "Write a plot of T(l) here (.png)");
  bench_cmd->add_option("--trace", bench.trace,
                        "Write the chosen point's steps as a Chrome trace (JSON) here");
  bench_cmd->add_option("--profile", bench.profile,
                        "Hardware profile file (default: measured, cached)");
  bench_cmd->add_flag("--remeasure", bench.remeasure, "Measure the profile again");
  bench_cmd->add_option("--drift-margin", bench.drift_margin,
                        "Refit a profile whose predictions miss the measured points by more than "
                        "this share, re-decide and cache the refit (0: never)");
  bench_cmd->add_flag("--quiet", bench.quiet, "No progress output");
  add_backend_flags(bench_cmd, bench.backend);

  kvpr::cli::UpOptions up;
  auto* up_cmd = app.add_subcommand(
      "up",
      "Start a node deployment on loopback: kvstore, planners, workers and gateways as processes");
  up_cmd->add_option("--model", up.model, "Checkpoint directory the workers load")->required();
  up_cmd->add_option("--workers", up.workers, "Worker processes");
  up_cmd->add_option("--planners", up.planners, "Planner replicas");
  up_cmd->add_option("--gateways", up.gateways, "OpenAI-compatible HTTP gateways (0: none)");
  up_cmd->add_option("--max-batch", up.max_batch, "Each worker's continuous batch, in sequences");
  up_cmd->add_option("--max-queue", up.max_queue, "Requests that may wait at each worker");
  up_cmd->add_option("--max-prefill-tokens-per-step", up.max_prefill_tokens,
                     "Prompt tokens a worker prefills between two decode steps");
  up_cmd->add_option("--admit", up.admit, "Workers' admission: full or prompt");
  up_cmd->add_option("--run-dir", up.run_dir, "Folder for logs and deployment.json (default: new)");
  up_cmd->add_option("--kv-capacity", up.capacity_bytes, "kvstore capacity in bytes");
  up_cmd->add_option("--lease-ms", up.lease_ms, "kvstore lease of a silent worker");
  up_cmd->add_option("--profile", up.profile, "Workers' planning: nominal or measured");
  up_cmd->add_option("--ready-timeout", up.ready_timeout_s, "Seconds to wait for the services");
  up_cmd->add_flag("--insecure", up.insecure,
                   "No keys: plain sockets on loopback (default: RUN/keys, every socket CURVE)");
  add_backend_flags(up_cmd, up.backend);

  std::string keygen_out;
  std::vector<std::string> keygen_names;
  auto* keygen_cmd = app.add_subcommand(
      "keygen", "Make CURVE keys: the services' server.key/.pub, and a key pair per --name");
  keygen_cmd->add_option("--out", keygen_out, "Key folder (created; existing keys are kept)")
      ->required();
  keygen_cmd->add_option("--name", keygen_names,
                         "A peer (worker-0, gateway-0, client, ...): NAME.key and "
                         "authorized/NAME.pub; repeat");

  kvpr::cli::DownOptions down;
  auto* down_cmd = app.add_subcommand("down", "Stop a deployment started by kvpr up");
  down_cmd->add_option("--run-dir", down.run_dir, "The deployment's folder")->required();
  down_cmd->add_option("--timeout", down.timeout_s, "Seconds each group gets to drain");

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
    if (batch_cmd->parsed()) return kvpr::cli::batch_command(batch);
    if (serve_cmd->parsed()) {
      if (serve.served_name.empty()) {
        serve.served_name = std::filesystem::weakly_canonical(serve.model).filename().string();
      }
      return kvpr::cli::serve_command(serve);
    }
    if (gen_cmd->parsed()) return kvpr::cli::gen_model_command(gen);
    if (demo_cmd->parsed()) return kvpr::cli::demo_command(demo);
    if (prof_cmd->parsed()) return kvpr::cli::profile_command(prof);
    if (plan_cmd->parsed()) return kvpr::cli::plan_command(plan);
    if (bench_cmd->parsed()) return kvpr::cli::bench_command(bench);
    if (up_cmd->parsed()) return kvpr::cli::up_command(up);
    if (down_cmd->parsed()) return kvpr::cli::down_command(down);
    if (keygen_cmd->parsed()) {
      for (const auto& file : kvpr::net::keygen(keygen_out, keygen_names)) {
        std::printf("%s\n", file.c_str());
      }
      return 0;
    }
  } catch (const kvpr::Error& e) {
    report(kvpr::to_string(e.kind()), e.what());
    return 1;
  } catch (const std::exception& e) {
    report("failed", e.what());
    return 1;
  }
  return 1;
}
