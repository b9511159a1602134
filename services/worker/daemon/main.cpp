// kvpr-worker: one worker process. Loads a checkpoint onto its backend, registers with the kvstore
// daemon (whose memory it maps through UCX) and the planner replicas (to which it reports its
// profile), and serves generation requests until SIGTERM, then drains. main() parses and wires.
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <thread>
#include <zmq.hpp>

#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/kvstore/remote_kv_store.h"
#include "kvpr/net/daemon.h"
#include "kvpr/net/service.h"
#include "kvpr/planner/caching_planner.h"
#include "kvpr/planner/fallback_planner.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/planner/remote_planner.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/profile_drift.h"
#include "kvpr/worker/profiler.h"
#include "kvpr/worker/worker_service.h"

namespace {

struct Flags {
  std::string model;
  std::string listen = "tcp://127.0.0.1:5557";
  std::string kvstore = "tcp://127.0.0.1:5555";
  std::vector<std::string> planners;
  std::string backend = "cpu";
  double emulate_link_gbps = 0;
  double emulate_link_latency_us = 0;
  int threads = 0;
  std::string compute_dtype = "auto";  // kernels::resolve_compute_dtype
  int host_threads = 1;
  std::string profile = "nominal";
  std::string name = "worker";
  int kv_timeout_ms = 2000;
  int planner_timeout_ms = 1000;
  std::string trace;
  kvpr::planner::DriftOptions drift;
  std::int64_t max_batch = 32;
  std::size_t max_queue = 64;
  std::int64_t max_prefill_tokens = 2048;
  std::string admit = "full";
  int stalled_client_ms = 10000;
  kvpr::net::DaemonFlags daemon;
  std::uint64_t device_memory = 0;  // throughput mode: the backend's budget
  double weight_fraction = -1;      // of each layer's weights on the device; < 0: auto
  std::int64_t micro_batches = 1;   // block schedule
};

int serve(const Flags& f) {
  using namespace kvpr;
  if (f.profile != "nominal" && f.profile != "measured") {
    fail("--profile must be nominal or measured, got '", f.profile, "'");
  }
  if (f.emulate_link_gbps < 0) fail("--emulate-link-gbps must be >= 0, got ", f.emulate_link_gbps);
  kernels::BackendOptions options;
  options.name = f.backend;
  options.emulate_link_gbps = f.emulate_link_gbps;
  options.emulate_link_latency_s = f.emulate_link_latency_us * 1e-6;
  options.threads = f.threads;
  options.device_memory = f.device_memory;
  if (f.micro_batches < 1) fail("--micro-batches must be at least 1, got ", f.micro_batches);
  if (f.weight_fraction > 1) fail("--weight-fraction must be in [0, 1], got ", f.weight_fraction);

  Checkpoint checkpoint(f.model);
  const ModelConfig& c = checkpoint.config();
  options.compute_dtype = kernels::resolve_compute_dtype(f.compute_dtype, f.backend, c.dtype);
  auto backend = kernels::make_backend(options);
  worker::WeightPlacement placement;
  if (f.weight_fraction < 0) {  // the most that fits beside a full batch at the model's positions
    placement.device_fraction = std::nullopt;
    placement.reserve_bytes = worker::working_set_bytes(c, f.max_batch, c.max_positions,
                                                        f.micro_batches, backend->compute_dtype());
  } else {
    placement.device_fraction = f.weight_fraction;
  }
  worker::DeviceModel model(checkpoint, *backend, false, placement);

  zmq::context_t context;
  net::SecurityOptions security_options = f.daemon.security;
  security_options.name = f.name;
  net::Security security(context, security_options);
  kvstore::StoreShape shape;
  shape.n_layers = c.n_layers;
  shape.h = c.h;
  shape.h_kv = c.h_kv();
  shape.dtype = c.dtype;
  if (f.host_threads < 1) fail("--host-threads must be at least 1, got ", f.host_threads);
  kvstore::RemoteKvStore store(context, shape,
                               {f.kvstore, f.name, std::chrono::milliseconds(f.kv_timeout_ms), true,
                                static_cast<std::uint32_t>(f.host_threads)});
  // The store's memory is mapped again after the kvstore restarts; the device registers the
  // current mapping before each request.
  void* registered = nullptr;
  std::uint64_t generation = 0;
  auto map_store = [&] {
    if (registered != nullptr && generation == store.generation()) return;
    if (registered != nullptr) backend->unregister_host(registered);
    registered = nullptr;
    if (store.zero_copy() && store.arena() != nullptr) {
      backend->register_host(store.arena(), store.arena_bytes());
      registered = store.arena();
    }
    generation = store.generation();
  };
  map_store();

  std::unique_ptr<planner::Planner> planner;
  std::unique_ptr<planner::RemotePlanner> remote;
  std::unique_ptr<planner::Planner> local;  // with replicas: plans while none answers
  std::unique_ptr<planner::FallbackPlanner> fallback;
  double link_bytes_per_s = 0;
  const planner::StepShape step = worker::step_shape(c, store.shape().block_tokens);
  std::optional<HardwareProfile> profile;
  if (f.profile == "measured") {
    worker::ProfileOptions po;
    po.host_threads = f.host_threads;
    profile = worker::cached_profile(*backend, options, c, false, po);
    link_bytes_per_s = profile->h2d_bytes_per_s.at(worker::kProfileLinkBytes);
  }
  // What a refitted profile replaces (profile_drift.h): the in-process scheduler's profile, or the
  // one the replicas hold, with the plans cached from the old one.
  worker::ProfileCorrector::Apply apply;
  // The in-process planner: the only one without replicas, the fallback with them.
  planner::ProfilePlanner* local_profile = nullptr;
  if (profile) {
    auto p = std::make_unique<planner::ProfilePlanner>(*profile, step);
    local_profile = p.get();
    local = std::move(p);
  } else {
    local = std::make_unique<planner::CostModelPlanner>();
  }
  if (f.planners.empty()) {
    if (local_profile != nullptr) {
      apply = [local_profile](const HardwareProfile& refit) {
        local_profile->update_profile(refit);
      };
    }
    planner = std::move(local);
  } else {
    remote = std::make_unique<planner::RemotePlanner>(
        context, f.planners, step, profile ? profile->fingerprint : std::string(),
        std::chrono::milliseconds(f.planner_timeout_ms));
    if (profile) remote->report(*profile);
    // Plans made locally during an outage are cached like the replicas' for their bucket.
    fallback = std::make_unique<planner::FallbackPlanner>(*remote, *local);
    auto caching = std::make_unique<planner::CachingPlanner>(*fallback);
    apply = [r = remote.get(), c = caching.get(), local_profile](const HardwareProfile& refit) {
      r->report(refit);  // replicas that miss it get it before their next plan
      if (local_profile != nullptr) local_profile->update_profile(refit);
      c->clear();
    };
    planner = std::move(caching);
  }
  std::unique_ptr<worker::ProfileCorrector> corrector;
  if (profile) {
    corrector = std::make_unique<worker::ProfileCorrector>(
        *profile, step, f.drift, apply, worker::profile_cache_path(profile->fingerprint));
  }

  worker::WorkerServiceOptions so;
  so.endpoint = f.listen;
  so.name = f.name;
  so.model_name = std::filesystem::weakly_canonical(f.model).filename().string();
  so.metrics_port = f.daemon.metrics_port;
  so.metrics_host = f.daemon.metrics_host;
  so.prepare = map_store;
  so.link_bytes_per_s = link_bytes_per_s;
  so.trace_path = f.trace;
  so.corrector = corrector.get();
  so.fallback = fallback.get();
  so.max_queue = f.max_queue;
  if (f.host_threads < 1) fail("--host-threads must be at least 1, got ", f.host_threads);
  so.host_threads = f.host_threads;
  if (f.stalled_client_ms < 100) {
    fail("--stalled-client-ms must be at least 100, got ", f.stalled_client_ms);
  }
  so.stalled_client = std::chrono::milliseconds(f.stalled_client_ms);
  so.batching.max_batch = f.max_batch;
  so.batching.max_prefill_tokens_per_step = f.max_prefill_tokens;
  so.batching.admit = worker::parse_admit(f.admit);
  so.batching.engine.micro_batches = f.micro_batches;
  worker::WorkerService service(context, model, *backend, store, *planner, so);
  service.start();
  log::info(f.name, ": serving ", f.model, " on ", service.endpoint(), " (kvstore ", f.kvstore,
            ", ", store.zero_copy() ? "" : "not", " zero-copy; ", f.planners.size(),
            " planner(s)); metrics on :", service.metrics_port());
  if (!f.daemon.ready_file.empty()) {
    net::write_ready_file(f.daemon.ready_file,
                          {f.name, "worker", service.endpoint(), service.metrics_port()});
  }
  while (!net::stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  log::info(f.name, ": stopping; finishing queued requests");
  service.stop();
  if (registered != nullptr) backend->unregister_host(registered);
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"kvpr-worker: runs prefill and decode steps for clients on one device"};
  Flags f;
  app.add_option("--model", f.model, "Checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--listen", f.listen, "ZeroMQ endpoint for clients (tcp://HOST:0: a free port)");
  app.add_option("--kvstore", f.kvstore, "The kvstore daemon's endpoint");
  app.add_option("--planner", f.planners,
                 "A planner replica's endpoint; repeat for several (none: plan in-process)");
  app.add_option("--backend", f.backend, "Kernel backend: cpu or cuda");
  app.add_option("--emulate-link-gbps", f.emulate_link_gbps,
                 "CPU backend: throttle host<->device copies to this many GB/s (0 = off)");
  app.add_option("--emulate-link-latency-us", f.emulate_link_latency_us,
                 "CPU backend: latency added to every copy, in microseconds");
  app.add_option("--threads", f.threads, "Compute threads (0 = backend default)");
  app.add_option("--compute-dtype", f.compute_dtype,
                 "Dtype of device tensors: auto (a half-precision checkpoint's own on cuda, f32 "
                 "on cpu), f32, f16 or bf16");
  app.add_option("--profile", f.profile,
                 "nominal (backend's nominal rates) or measured (profile, cached, reported)");
  app.add_option("--drift-margin", f.drift.margin,
                 "--profile measured: refit the profile when decode steps drift from their "
                 "predictions by more than this share over a window");
  app.add_option("--drift-window", f.drift.window,
                 "Decode steps per drift verdict (0: never refit the profile)");
  app.add_option("--name", f.name, "Name in logs and metrics (and its key: KEYS/NAME.key)");
  app.add_option("--kv-timeout-ms", f.kv_timeout_ms, "Deadline of each kvstore request");
  app.add_option("--planner-timeout-ms", f.planner_timeout_ms, "Deadline of each plan request");
  app.add_option("--max-batch", f.max_batch, "Sequences decoded together (continuous batching)");
  app.add_option("--device-memory", f.device_memory,
                 "Device memory the backend may use, in bytes (0 = the device's)");
  app.add_option("--weight-fraction", f.weight_fraction,
                 "Share of each layer's weights on the device, 0..1 (default: the most that fits "
                 "--device-memory); the rest streams from host memory");
  app.add_option("--micro-batches", f.micro_batches,
                 "Block schedule: micro-batches per decode step (1 = the latency schedule)");
  app.add_option("--host-threads", f.host_threads,
                 "Threads attending over [m, s) on the host under a three-way split")
      ->capture_default_str();
  app.add_option("--stalled-client-ms", f.stalled_client_ms,
                 "Cancel the requests of a client that has not read its events for this long")
      ->capture_default_str();
  app.add_option("--max-queue", f.max_queue,
                 "Requests that may wait; more are answered overloaded");
  app.add_option("--max-prefill-tokens-per-step", f.max_prefill_tokens,
                 "Prompt tokens prefilled between two decode steps (bounds a step's stall)");
  app.add_option("--admit", f.admit,
                 "full: admit when prompt + max tokens fit the KV store; prompt: when the prompt "
                 "fits (more in the batch; preempts when the store fills)");
  app.add_option("--trace", f.trace,
                 "Write every decode step's copy and compute spans here (Chrome trace JSON)");
  kvpr::net::add_daemon_flags(app, f.daemon, "{endpoint, metrics_port, pid}");
  if (const auto code = kvpr::net::start_daemon(app, argc, argv, "kvpr-worker", f.daemon)) {
    return *code;
  }
  return kvpr::net::run_daemon("kvpr-worker", [&] { return serve(f); });
}
