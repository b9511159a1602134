// The worker's Prometheus instruments (names of DESIGN.md §5), registered once per service with
// constant labels worker and model_name. Updated by the executor thread; read by the exposer.
#pragma once

#include <string>

#include "kvpr/net/metrics.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/profile_drift.h"

namespace kvpr::worker {

struct WorkerMetrics {
  WorkerMetrics(prometheus::Registry& registry, const std::string& worker,
                const std::string& model_name);

  // One decode step: phase histograms, transfer bytes and seconds, recompute/transfer tokens and
  // the split ratio of its plan.
  void observe_step(const StepStats& step);
  // After the profile corrector saw a step: its drift ratio, and the refit if there was one.
  void observe_drift(const ProfileCorrector& corrector, bool refitted);

  prometheus::Histogram* time_to_first_token = nullptr;
  prometheus::Histogram* inter_token = nullptr;
  prometheus::Histogram* step_transfer = nullptr;
  prometheus::Histogram* step_recompute = nullptr;
  prometheus::Histogram* step_attention = nullptr;
  prometheus::Histogram* step_other = nullptr;
  prometheus::Histogram* step_idle = nullptr;
  prometheus::Histogram* step_total = nullptr;
  prometheus::Counter* h2d_bytes = nullptr;
  prometheus::Counter* d2h_bytes = nullptr;
  prometheus::Counter* h2d_seconds = nullptr;
  prometheus::Counter* recompute_tokens = nullptr;
  prometheus::Counter* transfer_tokens = nullptr;
  prometheus::Counter* tokens = nullptr;
  prometheus::Counter* requests_completed = nullptr;
  prometheus::Counter* requests_failed = nullptr;
  prometheus::Gauge* split_ratio = nullptr;
  prometheus::Gauge* predicted_step = nullptr;
  prometheus::Gauge* profile_h2d = nullptr;
  prometheus::Gauge* queue_depth = nullptr;
  prometheus::Gauge* drift_ratio = nullptr;
  prometheus::Gauge* running_sequences = nullptr;
  prometheus::Gauge* waiting_sequences = nullptr;
  prometheus::Counter* preemptions = nullptr;
  prometheus::Counter* cancellations = nullptr;
  prometheus::Counter* abandoned_stalled = nullptr;  // kvpr_abandoned_requests_total{reason}
  prometheus::Counter* abandoned_gone = nullptr;
  prometheus::Histogram* request_latency = nullptr;
  prometheus::Counter* profile_refits = nullptr;
  prometheus::Counter* planner_fallbacks = nullptr;
};

}  // namespace kvpr::worker
