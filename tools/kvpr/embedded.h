// The embedded deployment: every service of kvpr in one process (host KV store, planner, one
// worker engine on one backend), wired for a checkpoint. Owned by one command for its lifetime.
#pragma once

#include <memory>
#include <string>

#include "commands.h"
#include "kvpr/common/checkpoint.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/profile_drift.h"

namespace kvpr::cli {

struct Embedded {
  Embedded(const std::string& model_dir, const BackendFlags& flags, planner::Policy policy,
           std::optional<std::int64_t> split, std::uint64_t capacity_bytes, bool show_progress,
           const std::string& planner_kind = "nominal");
  ~Embedded();
  Embedded(const Embedded&) = delete;
  Embedded& operator=(const Embedded&) = delete;

  Checkpoint checkpoint;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<worker::DeviceModel> model;
  std::unique_ptr<kvstore::LocalKvStore> store;
  // "nominal": the cost model with the backend's nominal rates; "measured": the scheduler on this
  // machine's profile (measured once and cached), re-planning as contexts cross buckets.
  std::unique_ptr<planner::Planner> planner;
  // "measured": refits the profile when the steps drift from its predictions, re-plans and
  // caches the refit (hand it to WorkerServiceOptions::corrector); null otherwise.
  std::unique_ptr<worker::ProfileCorrector> corrector;
  std::unique_ptr<worker::Engine> engine;
};

// The backend the flags ask for; `checkpoint` (the model's dtype) decides --compute-dtype auto.
kernels::BackendOptions backend_options(const BackendFlags& flags, DType checkpoint);
// "auto" → nullopt; a non-negative integer → that split; anything else is an Error naming it.
std::optional<std::int64_t> parse_split(const std::string& split);
// `--split` of kvpr run: "L" / "auto" as parse_split, or "L:M" / "auto:M" adding the host split M
// (tokens [M, s) attended on the host); Error naming the value otherwise.
struct SplitRequest {
  std::optional<std::int64_t> l;
  std::optional<std::int64_t> m;
};
SplitRequest parse_split_request(const std::string& split);

}  // namespace kvpr::cli
