// The planner seam: given a batch's shape, which KV policy and which split `l` per sequence a
// decode step uses, with the predicted time and the reason. Implemented in-process by the cost
// model (CostModelPlanner) and by the profile scheduler (ProfilePlanner, profile_planner.h); across
// processes by the planner service's client (RemotePlanner, remote_planner.h); CachingPlanner
// (caching_planner.h) caches any of them by shape bucket.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/planner/cost_model.h"
#include "kvpr/planner/decode_schedule.h"

namespace kvpr::planner {

enum class Policy {
  resident,   // K,V stay on the device: the correctness baseline
  transfer,   // all K,V fetched from host each step, next layer's fetch overlapping this layer
  recompute,  // all K,V recomputed from activations
  kvpr,       // tokens [0, l) recomputed from activations chunk by chunk, [l, s) fetched
};

std::string_view to_string(Policy policy);
// Error naming the value when unknown.
Policy parse_policy(std::string_view name);

struct PlanRequest {
  LayerShape shape;
  std::int64_t n_layers = 0;
  std::vector<std::int64_t> s;  // context length of each sequence (tokens already stored)
  Policy policy = Policy::kvpr;
  std::optional<std::int64_t> split;  // fixed l (clamped to each s); nullopt = choose
  Rates rates;                        // the worker's rates
  // Fixed host split m (clamped to [l, s]): tokens [m, s) attended on the host; nullopt = the
  // planner's choice (CostModelPlanner: none, m = s).
  std::optional<std::int64_t> host_split = std::nullopt;
  // Host-attention threads the worker may use now (its share of the node's budget, which the
  // kvstore gives out); 0: as many as the profile says.
  std::int64_t host_threads = 0;
};

struct Plan {
  Policy policy = Policy::kvpr;
  std::vector<std::int64_t> l;       // per sequence
  std::vector<std::int64_t> m = {};  // host attention from m of each sequence on; empty: m = s
  std::int64_t chunk = 0;            // activation rows recomputed per pipeline chunk
  bool paper_schedule = false;       // one chunk: all activations land before any recompute
  double ratio = 0;                  // l_i ≈ ratio · s_i
  double host_ratio = 0;             // s_i − m_i ≈ host_ratio · s_i (ProfilePlanner's choice)
  double predicted_step_s =
      0;  // CostModelPlanner: link and recompute only; ProfilePlanner: whole step
  std::string reason;
};

class Planner {
 public:
  virtual ~Planner() = default;
  virtual Plan plan(const PlanRequest& request) = 0;
};

class CostModelPlanner final : public Planner {
 public:
  explicit CostModelPlanner(std::int64_t chunk_tokens = kChunkTokens) : chunk_(chunk_tokens) {}
  Plan plan(const PlanRequest& request) override;

 private:
  std::int64_t chunk_;
};

}  // namespace kvpr::planner
