// An in-process stack for engine tests: checkpoint → backend (CPU unless the test names another) →
// device model → host store → cost-model planner → engine, with the policy and split under test.
// The golden and policy suites build it on every backend (backends.h).
#pragma once

#include <cmath>
#include <memory>
#include <optional>
#include <string>

#include "kvpr/common/checkpoint.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/engine.h"

namespace kvpr::worker::testing {

// Throughput mode's knobs: weights kept on the device and micro-batches of the block schedule.
struct ThroughputKnobs {
  WeightPlacement placement = {};
  std::int64_t micro_batches = 1;
};

struct Stack {
  Stack(const std::string& dir, planner::Policy policy, std::optional<std::int64_t> split,
        std::uint64_t capacity = 1ull << 28, const kernels::BackendOptions& backend_options = {},
        const ThroughputKnobs& knobs = {})
      : checkpoint(dir), backend(kernels::make_backend(backend_options)) {
    model = std::make_unique<DeviceModel>(checkpoint, *backend, false, knobs.placement);
    const auto& c = checkpoint.config();
    store = std::make_unique<kvstore::LocalKvStore>(
        kvstore::StoreShape{c.n_layers, c.h, c.h_kv(), c.dtype, 16}, capacity);
    EngineOptions options{policy, split};
    options.micro_batches = knobs.micro_batches;
    engine = std::make_unique<Engine>(*model, *backend, *store, planner, options);
  }

  // Rows [0, n) of one part of one layer of a sequence, converted to f32, as [n, width].
  std::vector<float> stored(SeqHandle seq, std::int64_t layer, kvstore::Part part, std::int64_t n) {
    const auto& shape = store->shape();
    const auto width = static_cast<std::size_t>(shape.width(part));
    std::vector<float> out(static_cast<std::size_t>(n) * width);
    for (const auto& span : store->locate(seq, layer, part, 0, n)) {
      convert(span.data, shape.dtype, out.data() + static_cast<std::size_t>(span.t0) * width,
              DType::f32, static_cast<std::size_t>(span.n_tokens) * width);
    }
    return out;
  }

  Checkpoint checkpoint;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<DeviceModel> model;
  std::unique_ptr<kvstore::LocalKvStore> store;
  planner::CostModelPlanner planner{4};  // small chunks so tiny prompts still pipeline
  std::unique_ptr<Engine> engine;
};

// Largest |a[i] - b[i]|; a NaN anywhere counts as the worst difference.
inline float max_abs_diff(const float* a, const float* b, std::size_t n) {
  float worst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float d = std::abs(a[i] - b[i]);
    if (!(d <= worst)) worst = d;
  }
  return worst;
}

}  // namespace kvpr::worker::testing
