// The scheduler: from a measured HardwareProfile and the model's shape, the policy, split, host
// split (three-way: tokens [m, s) attended on the host) and chunk size that minimise the predicted
// decode step (kvpr::predict_step replays the engine's schedule),
// for the batch's context lengths. Plans are cached by shape bucket — the batch size and each
// context length rounded up to `bucket` tokens — so a worker re-plans only when its contexts grow
// past a bucket, and the planner stays off the per-step critical path.
//
// Thread-safe: plan, decide and predict may run on any threads while update_profile swaps in a
// corrected profile (drift_monitor.h); each call works on one profile from start to end.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "kvpr/planner/plan_cache.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::planner {

struct CurvePoint {
  double ratio = 0;
  std::vector<std::int64_t> l;
  std::int64_t chunk = 0;
  bool paper = false;
  StepPrediction predicted;
};

struct Decision {
  std::vector<std::int64_t> s;  // the contexts decided for
  Plan plan;
  StepPrediction predicted;
  StepPrediction transfer;        // l = 0, for comparison
  StepPrediction recompute;       // l = s
  double lower_bound_s = 0;       // DESIGN.md §1 LB over all layers, from the profile's rates
  std::vector<CurvePoint> curve;  // T(l) at the best chunk, ratios 0..1
  StepPrediction two_way;         // the best (l, chunk) with nothing on the host
};

class ProfilePlanner final : public Planner {
 public:
  // `model` carries n_layers, h, h_kv, ffn, gated_ffn, p and block_tokens; s/l are ignored.
  ProfilePlanner(HardwareProfile profile, StepShape model, std::int64_t bucket = kPlanBucketTokens);

  Plan plan(const PlanRequest& request) override;
  // The full decision for a batch, with the predicted T(l) curve; not cached.
  Decision decide(const std::vector<std::int64_t>& s) const;
  // Predicted step for a given policy and split (for benchmarks that sweep l).
  // `m`: host attention from m_i on (empty: none).
  StepPrediction predict(const std::vector<std::int64_t>& s, const std::vector<std::int64_t>& l,
                         std::int64_t chunk, bool resident,
                         const std::vector<std::int64_t>& m = {}) const;

  // Plans from now on use `profile` (same h and h_kv, else Error failed); cached plans are
  // dropped, so the next step of every bucket is planned again.
  void update_profile(HardwareProfile profile);

  HardwareProfile profile() const { return *current(); }
  const StepShape& model() const { return model_; }
  std::int64_t plans_computed() const { return cache_.misses(); }

 private:
  std::shared_ptr<const HardwareProfile> current() const;
  Decision decide(const HardwareProfile& profile, const std::vector<std::int64_t>& s) const;
  StepPrediction predict(const HardwareProfile& profile, const std::vector<std::int64_t>& s,
                         const std::vector<std::int64_t>& l, std::int64_t chunk, bool resident,
                         const std::vector<std::int64_t>& m = {}) const;
  // The third resource: moves the oldest tokens to the host when that shortens the predicted step
  // (profile with host attention measured), and says why or why not in the plan's reason.
  void add_host_split(const HardwareProfile& profile, const std::vector<std::int64_t>& s,
                      Decision& d) const;

  mutable std::mutex mutex_;  // guards profile_ (the pointer; the profile itself is immutable)
  std::shared_ptr<const HardwareProfile> profile_;
  StepShape model_;
  PlanCache cache_;  // policy kvpr with the split left to the planner
};

}  // namespace kvpr::planner
