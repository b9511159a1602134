#include "kvpr/planner/drift_monitor.h"

#include <algorithm>
#include <cmath>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

// Phases shorter than this over a whole window carry no rate to fit (a resident step's copies, a
// transfer-only step's recompute).
constexpr double kMinPhaseS = 1e-7;
// A window cannot move a rate by more than this factor either way: one refit corrects a profile
// measured on a busy machine, not a different machine.
constexpr double kMaxScale = 100;

struct Sums {
  StepPrediction predicted;
  StepPrediction measured;
};

void add(StepPrediction& into, const StepPrediction& p) {
  into.total_s += p.total_s;
  into.transfer_s += p.transfer_s;
  into.recompute_s += p.recompute_s;
  into.attention_s += p.attention_s;
  into.other_s += p.other_s;
  into.idle_s += p.idle_s;
}

Sums sums(const HardwareProfile& profile, const std::vector<ObservedStep>& steps) {
  Sums out;
  for (const auto& step : steps) {
    add(out.predicted, predict_step(profile, step.shape));
    add(out.measured, step.measured);
  }
  return out;
}

double ratio(double measured, double predicted) {
  return predicted > 0 ? measured / predicted : 1.0;
}

// measured / predicted time of one phase, clamped; 1 when either side has too little time.
double scale(double measured, double predicted) {
  if (measured < kMinPhaseS || predicted < kMinPhaseS) return 1;
  return std::clamp(measured / predicted, 1 / kMaxScale, kMaxScale);
}

// A rate curve whose times are `k` times what they were: each rate divided by k.
void slow_down(Curve& curve, double k) {
  for (auto& y : curve.y) y /= k;
}

}  // namespace

double drift_ratio(const HardwareProfile& profile, const std::vector<ObservedStep>& steps) {
  const Sums s = sums(profile, steps);
  return ratio(s.measured.total_s, s.predicted.total_s);
}

Refit refit_profile(const HardwareProfile& profile, const std::vector<ObservedStep>& steps) {
  if (steps.empty()) fail("refit_profile: no observed steps");
  const Sums before = sums(profile, steps);
  Refit r;
  r.ratio_before = ratio(before.measured.total_s, before.predicted.total_s);
  r.transfer_scale = scale(before.measured.transfer_s, before.predicted.transfer_s);
  r.recompute_scale = scale(before.measured.recompute_s, before.predicted.recompute_s);
  r.attention_scale = scale(before.measured.attention_s, before.predicted.attention_s);
  r.other_scale = scale(before.measured.other_s, before.predicted.other_s);

  HardwareProfile& p = r.profile;
  p = profile;
  slow_down(p.h2d_bytes_per_s, r.transfer_scale);
  slow_down(p.d2h_bytes_per_s, r.transfer_scale);
  slow_down(p.recompute_flops_per_s, r.recompute_scale);
  p.attention_s_per_token *= r.attention_scale;
  p.attention_s_per_query *= r.attention_scale;
  p.other_s_per_layer *= r.other_scale;
  p.other_s_per_row *= r.other_scale;
  p.head_s *= r.other_scale;
  p.head_s_per_row *= r.other_scale;

  // What the phases leave unexplained, once per step on the compute queue: the median over the
  // steps, so that one step slowed down by something else does not move every prediction.
  std::vector<double> unexplained;
  unexplained.reserve(steps.size());
  for (const auto& step : steps) {
    unexplained.push_back(step.measured.total_s - predict_step(p, step.shape).total_s);
  }
  const auto mid = unexplained.begin() + static_cast<std::ptrdiff_t>(unexplained.size() / 2);
  std::nth_element(unexplained.begin(), mid, unexplained.end());
  r.residual_s = std::max(*mid, -p.head_s);
  p.head_s += r.residual_s;
  r.ratio_after = drift_ratio(p, steps);
  return r;
}

DriftMonitor::DriftMonitor(HardwareProfile profile, DriftOptions options)
    : profile_(std::move(profile)), options_(options) {
  if (!(options_.margin > 0)) fail("drift margin must be > 0, got ", options_.margin);
  if (options_.window < 0) fail("drift window must be >= 0 steps, got ", options_.window);
}

std::optional<Refit> DriftMonitor::observe(ObservedStep step) {
  if (options_.window == 0 || !(step.measured.total_s > 0)) return std::nullopt;
  window_.push_back(std::move(step));
  if (static_cast<std::int64_t>(window_.size()) < options_.window) return std::nullopt;
  std::vector<ObservedStep> steps;
  steps.swap(window_);
  ratio_ = drift_ratio(profile_, steps);
  if (std::abs(ratio_ - 1) <= options_.margin) return std::nullopt;
  Refit refit = refit_profile(profile_, steps);
  profile_ = refit.profile;
  ++refits_;
  return refit;
}

}  // namespace kvpr::planner
