#include "kvpr/worker/profile_drift.h"

#include <algorithm>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::worker {

planner::ObservedStep observed_step(const planner::StepShape& model, const StepStats& step) {
  planner::ObservedStep out{model, {}};
  out.shape.s = step.s;
  out.shape.l = step.plan.l;
  out.shape.chunk = std::max<std::int64_t>(step.plan.chunk, 1);  // as the engine runs it
  out.shape.resident = step.plan.policy == planner::Policy::resident;
  out.shape.m = step.plan.m;  // as executed
  out.shape.micro = step.micro;
  out.shape.weight_bytes = step.weight_bytes;
  const PhaseTimes& t = step.times;
  out.measured = {t.total, t.transfer, t.recompute, t.attention, t.other, t.idle};
  return out;
}

ProfileCorrector::ProfileCorrector(HardwareProfile profile, planner::StepShape model,
                                   planner::DriftOptions options, Apply apply,
                                   std::filesystem::path cache_path)
    : model_(std::move(model)),
      monitor_(profile, options),
      apply_(std::move(apply)),
      cache_path_(std::move(cache_path)),
      profile_(std::move(profile)) {}

HardwareProfile ProfileCorrector::profile() const {
  std::lock_guard lock(mutex_);
  return profile_;
}

bool ProfileCorrector::observe(const StepStats& step) {
  if (step.s.empty()) return false;  // not a decode step the engine described
  auto refit = monitor_.observe(observed_step(model_, step));
  ratio_ = monitor_.ratio();
  if (!refit) return false;
  HardwareProfile& p = refit->profile;
  constexpr std::string_view kNote = "; rates refitted from observed decode steps";
  if (p.description.find(kNote) == std::string::npos) p.description += kNote;
  log::info("profile drift: decode steps took ", refit->ratio_before, "x the predicted time over ",
            monitor_.options().window, " steps; rates refitted (copy time x", refit->transfer_scale,
            ", recompute x", refit->recompute_scale, ", attention x", refit->attention_scale,
            ", other x", refit->other_scale, ", ", refit->residual_s * 1e3,
            " ms per step unexplained); now ", refit->ratio_after, "x");
  {
    std::lock_guard lock(mutex_);
    profile_ = p;
  }
  ++refits_;
  if (!cache_path_.empty()) {
    try {
      save_profile(p, cache_path_);
    } catch (const std::exception& e) {
      log::warn("profile drift: the refitted profile was not cached: ", e.what());
    }
  }
  if (apply_) apply_(p);
  return true;
}

}  // namespace kvpr::worker
