// The worker's side of a stale profile correcting itself (planner/drift_monitor.h): a
// ProfileCorrector watches the decode steps an Engine runs, and when their measured times drift
// from the step model's predictions past the margin over a window, hands the refitted profile to
// `apply` (ProfilePlanner::update_profile in-process; RemotePlanner::report plus dropping the
// CachingPlanner's plans with planner replicas) and writes it to the profile cache, so the next
// run on this machine starts from the corrected rates.
//
// Threading: observe() is called by the thread that runs the steps (the executor); ratio(),
// refits() and profile() may be read from any thread. A cache file that cannot be written is
// logged and skipped: the refit still applies to this run.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <mutex>

#include "kvpr/common/profile.h"
#include "kvpr/planner/drift_monitor.h"
#include "kvpr/planner/step_model.h"
#include "kvpr/worker/engine.h"

namespace kvpr::worker {

// The copy size at which a profile's host-to-device rate is quoted (logs, metrics): 64 MiB, where
// the curve has flattened on every link measured.
inline constexpr double kProfileLinkBytes = 64.0 * (1 << 20);

// A step as the drift monitor sees it: `model` (step_shape()) with the step's s, l, chunk and
// residency, and its measured phases.
planner::ObservedStep observed_step(const planner::StepShape& model, const StepStats& step);

class ProfileCorrector {
 public:
  using Apply = std::function<void(const HardwareProfile&)>;

  // `profile`: the one the plans are made from now. `cache_path`: where the refitted profile is
  // written (empty: nowhere).
  ProfileCorrector(HardwareProfile profile, planner::StepShape model, planner::DriftOptions options,
                   Apply apply, std::filesystem::path cache_path = {});

  // One decode step; true when it closed a drifting window and the profile was refitted (and
  // applied). Errors from `apply` propagate; the refit is kept either way.
  bool observe(const StepStats& step);

  double ratio() const { return ratio_.load(); }  // measured / predicted, last window
  std::int64_t refits() const { return refits_.load(); }
  HardwareProfile profile() const;

 private:
  planner::StepShape model_;
  planner::DriftMonitor monitor_;
  Apply apply_;
  std::filesystem::path cache_path_;
  std::atomic<double> ratio_{1.0};
  std::atomic<std::int64_t> refits_{0};
  mutable std::mutex mutex_;  // guards profile_
  HardwareProfile profile_;
};

}  // namespace kvpr::worker
