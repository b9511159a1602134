// `kvpr up` and `kvpr down`: a node deployment on loopback. `up` starts the kvstore daemon, the
// planner replicas and the workers as detached processes (each in its own session, logging to
// RUN_DIR/<name>.log), then the gateways, waits until every one has written its ready file,
// writes RUN_DIR/deployment.json and prints it: {"connect", "http" (the first gateway's URL),
// "run_dir", "services": [{"name", "role", "pid", "start_time", "endpoint", "metrics_port"}]}
// (start_time: the process's start in clock ticks since boot). `down` sends SIGTERM (gateways
// first, then workers, the kvstore last) to each pid whose start time is still the one recorded (a
// reused pid is left alone, with a note naming it), waits for each to drain and exit, and SIGKILLs
// what is still there after the timeout.
#pragma once

#include <cstdint>
#include <string>

#include "commands.h"

namespace kvpr::cli {

struct UpOptions {
  std::string model;
  int workers = 1;
  int planners = 1;
  int gateways = 1;  // kvpr-gateway processes in front of the workers (0: none)
  // The workers' continuous batching (kvpr-worker flags of the same names).
  std::int64_t max_batch = 32;
  std::size_t max_queue = 64;
  std::int64_t max_prefill_tokens = 2048;
  std::string admit = "full";
  std::string run_dir;  // empty: a new folder under $TMPDIR
  std::uint64_t capacity_bytes = 8ull << 30;
  std::int64_t lease_ms = 10000;
  std::string profile = "nominal";  // workers' planning: nominal or measured
  double ready_timeout_s = 120;
  BackendFlags backend;
  // Without keys: plain sockets (loopback only). By default `up` makes RUN/keys (kvpr keygen) and
  // every service authenticates every peer with them.
  bool insecure = false;
};

struct DownOptions {
  std::string run_dir;
  double timeout_s = 30;
};

int up_command(const UpOptions& options);
int down_command(const DownOptions& options);

}  // namespace kvpr::cli
