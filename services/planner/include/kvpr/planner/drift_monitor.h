// A stale profile corrects itself: the drift monitor compares each decode step's measured time
// with what the step model predicts for it from the profile the plans were made with, and when the
// two drift apart by more than a margin over a window of steps, refits the profile's rates from
// the observed steps (refit_profile). Whoever owns the monitor then swaps the refitted profile in
// (ProfilePlanner::update_profile, or RemotePlanner::report), so the plans are made again, and
// writes it back to the profile cache so the next run starts from it.
//
// The refit scales each phase's rates by measured / predicted time over the window: the copy
// curves by the copy queue's busy time, the recompute GEMM curve by the recompute time, the
// attention constants by the attention time and the rest of the layer and the head by the other
// time. Each scale is exact for the window's steps (every predicted copy, chunk or op time is
// proportional to its rate); the time the phases leave unexplained (planning, store calls, gaps
// between ops; the median over the steps) is then carried by the per-step head constant, so the
// refitted total matches too.
//
// Not thread-safe: one thread (the one that runs the steps) feeds a monitor.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kvpr/common/profile.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::planner {

struct DriftOptions {
  double margin = 0.15;      // refit when |measured / predicted − 1| over a window passes this
  std::int64_t window = 16;  // steps per verdict; 0 turns the monitor off
};

// One decode step as it ran: the model's shape with the step's s, l, chunk and residency, and the
// measured seconds per phase (StepPrediction's fields, as measured: transfer is the copy queue's
// busy time, total the wall time).
struct ObservedStep {
  StepShape shape;
  StepPrediction measured;
};

struct Refit {
  HardwareProfile profile;
  // measured / predicted time per phase over the steps: what each phase's times were scaled by
  // (1 where a phase had no time on either side).
  double transfer_scale = 1;
  double recompute_scale = 1;
  double attention_scale = 1;
  double other_scale = 1;
  double residual_s = 0;    // per step (median), added to the head constant after the scales
  double ratio_before = 1;  // measured / predicted total over the steps, old profile
  double ratio_after = 1;   // ... refitted profile
};

// The profile's rates refitted to `steps` (see above). Fails on an empty list.
Refit refit_profile(const HardwareProfile& profile, const std::vector<ObservedStep>& steps);

// measured / predicted total over `steps` under `profile` (1 when nothing was predicted).
double drift_ratio(const HardwareProfile& profile, const std::vector<ObservedStep>& steps);

class DriftMonitor {
 public:
  explicit DriftMonitor(HardwareProfile profile, DriftOptions options = {});

  // Adds one step; when it closes a window whose drift passes the margin, returns the refit and
  // predicts from the refitted profile from then on. Windows do not overlap.
  std::optional<Refit> observe(ObservedStep step);

  // measured / predicted total over the last closed window (1 before the first).
  double ratio() const { return ratio_; }
  std::int64_t refits() const { return refits_; }
  const HardwareProfile& profile() const { return profile_; }
  const DriftOptions& options() const { return options_; }

 private:
  HardwareProfile profile_;
  DriftOptions options_;
  std::vector<ObservedStep> window_;
  double ratio_ = 1;
  std::int64_t refits_ = 0;
};

}  // namespace kvpr::planner
