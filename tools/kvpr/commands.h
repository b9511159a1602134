// The subcommands of the `kvpr` command line. main.cpp parses flags into these structs (and is the
// only file that includes CLI11); each command throws kvpr::Error on bad input and returns an exit
// code otherwise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvpr::cli {

// Throughput mode's device flags (kvpr run, kvpr batch): the device memory the backend may use,
// the share of each layer's weights kept there (the rest streamed from host memory), and the
// micro-batches of the block schedule.
struct DeviceFlags {
  std::uint64_t device_memory = 0;       // --device-memory; 0: the device's
  std::string weight_fraction = "auto";  // --weight-fraction: 0..1, or auto (the most that fits)
  std::int64_t micro_batches = 1;        // --micro-batches
  // Not flags: what the command will run, to size the working set beside the weights.
  std::int64_t batch = 1;
  std::int64_t context = 0;  // 0: the model's positions
};

struct BackendFlags {
  std::string backend = "cpu";
  double emulate_link_gbps = 0;
  double emulate_link_latency_us = 0;
  int threads = 0;
  std::string compute_dtype = "auto";  // kernels::resolve_compute_dtype
  DeviceFlags device;
};

struct RunOptions {
  std::string model;
  std::string keys;                  // --connect: the deployment's key folder (kvpr up's RUN/keys)
  std::vector<std::string> prompts;  // text, encoded with the checkpoint's tokenizer
  std::vector<std::string> prompt_tokens;  // "2,31,45", one per sequence
  std::int64_t max_new_tokens = 16;
  std::string policy = "kvpr";
  std::string split = "auto";  // L, auto, or L:M / auto:M (host attention from M on)
  int host_threads = 1;        // threads attending over [M, s) on the host
  BackendFlags backend;
  std::string logits_out;
  bool json = false;
  std::uint64_t capacity_bytes = 8ull << 30;
  std::string planner = "nominal";
  bool quiet = false;
  std::string connect;    // worker endpoints, comma-separated: run on a deployment
  double timeout_s = 30;  // --connect: a worker silent this long is taken for dead
  std::string trace;      // Chrome trace of every decode step's queue spans
};

struct GenModelOptions {
  std::string arch;
  std::string preset;
  std::string out;
  std::string dtype;  // empty: the preset's
  std::uint64_t seed = 0;
  std::int64_t layers = 0;  // 0: the preset's
  bool quiet = false;
};

struct DemoOptions {
  std::string dir = "kvpr-demo-model";
  std::string preset = "opt-125m";
  std::int64_t max_new_tokens = 24;
  BackendFlags backend;
};

// `kvpr serve`: gateway, worker, store and planner in one process (serve_command.cpp).
struct ServeOptions {
  std::string model;
  std::string served_name;  // the "model" clients name; default: the checkpoint folder's name
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: a free port
  std::string ready_file;
  std::string api_key_file;
  std::string tls_cert;  // HTTPS with tls_key
  std::string tls_key;
  bool insecure = false;  // serve beyond loopback without API keys
  std::string policy = "kvpr";
  std::string planner = "nominal";
  BackendFlags backend;
  std::uint64_t capacity_bytes = 8ull << 30;
  std::int64_t max_batch = 32;
  std::size_t max_queue = 64;
  std::int64_t max_prefill_tokens = 2048;
  std::string admit = "full";
  bool quiet = false;
};

// `kvpr batch`: a JSONL file of prompts through continuous batching (batch_command.cpp).
struct BatchOptions {
  std::string model;
  std::string input;   // JSONL: {"prompt": ...} or {"prompt_tokens": [...]} + sampling fields
  std::string output;  // JSONL results, appended; indices already there are skipped
  std::int64_t max_new_tokens = 16;  // a line's max_tokens when it gives none
  std::int64_t max_batch = 32;       // prompts in flight per worker (embedded: its batch)
  std::string on_bad_line = "skip";  // skip | fail
  std::string policy = "kvpr";
  BackendFlags backend;
  std::uint64_t capacity_bytes = 8ull << 30;
  std::string planner = "nominal";  // the embedded worker's split planner: nominal or measured
  int host_threads = 1;             // the embedded worker's host-attention threads
  std::string connect;              // worker endpoints of a deployment, comma-separated
  std::string keys;                 // --connect: the deployment's key folder
  bool quiet = false;
  bool json = false;
};

int run_command(const RunOptions& options);
int batch_command(const BatchOptions& options);
int serve_command(const ServeOptions& options);
int gen_model_command(const GenModelOptions& options);
int demo_command(const DemoOptions& options);

}  // namespace kvpr::cli

namespace kvpr::cli {

struct ProfileOptions {
  std::string model;
  std::string preset = "opt-6.7b";  // shape when no --model
  BackendFlags backend;
  bool json = false;
  bool remeasure = false;
  bool quick = false;
  std::string out;  // also write the profile here
};

struct PlanOptions {
  std::string model;
  std::int64_t batch = 1;
  std::int64_t context = 1024;
  std::string workload = "latency";
  std::string profile;                        // a profile file; else the cached/measured one
  std::uint64_t device_memory = 16ull << 30;  // throughput workload budget
  std::string policy = "kvpr";                // throughput: kvpr, or transfer (FlexGen's)
  BackendFlags backend;
  bool json = false;
};

struct BenchOptions {
  std::string model;
  std::int64_t batch = 1;
  std::int64_t context = 512;
  bool sweep = false;
  std::int64_t points = 11;
  std::int64_t steps = 3;
  std::int64_t confirm = 3;  // rounds re-measuring the chosen and the best point side by side
  std::string json;
  std::string plot;
  std::string profile;
  bool remeasure = false;
  BackendFlags backend;
  bool quiet = false;
  std::string trace;  // Chrome trace of the chosen point's measured steps
  // Refit the profile and decide again when the measured points drift from their predictions by
  // more than this share (0: never).
  double drift_margin = 0.15;
};

int profile_command(const ProfileOptions& options);
int plan_command(const PlanOptions& options);
int bench_command(const BenchOptions& options);

}  // namespace kvpr::cli
