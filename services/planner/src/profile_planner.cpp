#include "kvpr/planner/profile_planner.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvpr/common/error.h"
#include "kvpr/planner/cost_model.h"

namespace kvpr::planner {
namespace {

const std::vector<std::int64_t> kChunks = {16, 32, 64, 128, 256, 512, kPaperChunk};

std::string ms(double s) {
  return str(std::round(s * 1e5) / 1e2, " ms");
}

void check_shape(const HardwareProfile& profile, const StepShape& model) {
  if (profile.h != model.h || profile.h_kv != model.h_kv) {
    fail("planner: profile measured for h ", profile.h, ", h_kv ", profile.h_kv,
         " but the model has h ", model.h, ", h_kv ", model.h_kv, " (re-profile for this model)");
  }
}

}  // namespace

ProfilePlanner::ProfilePlanner(HardwareProfile profile, StepShape model, std::int64_t bucket)
    : model_(std::move(model)), cache_(bucket) {
  check_shape(profile, model_);
  profile_ = std::make_shared<const HardwareProfile>(std::move(profile));
}

void ProfilePlanner::update_profile(HardwareProfile profile) {
  check_shape(profile, model_);
  auto next = std::make_shared<const HardwareProfile>(std::move(profile));
  {
    std::lock_guard lock(mutex_);
    profile_ = std::move(next);
  }
  // After the swap: a plan being computed from the old profile holds the cache's lock, so it is
  // stored before this clear and dropped by it; later misses read the new profile.
  cache_.clear();
}

std::shared_ptr<const HardwareProfile> ProfilePlanner::current() const {
  std::lock_guard lock(mutex_);
  return profile_;
}

StepPrediction ProfilePlanner::predict(const std::vector<std::int64_t>& s,
                                       const std::vector<std::int64_t>& l, std::int64_t chunk,
                                       bool resident, const std::vector<std::int64_t>& m) const {
  return predict(*current(), s, l, chunk, resident, m);
}

StepPrediction ProfilePlanner::predict(const HardwareProfile& profile,
                                       const std::vector<std::int64_t>& s,
                                       const std::vector<std::int64_t>& l, std::int64_t chunk,
                                       bool resident, const std::vector<std::int64_t>& m) const {
  StepShape shape = model_;
  shape.s = s;
  shape.l = l;
  shape.m = m;
  shape.chunk = chunk;
  shape.resident = resident;
  return predict_step(profile, shape);
}

Decision ProfilePlanner::decide(const std::vector<std::int64_t>& s) const {
  return decide(*current(), s);
}

Decision ProfilePlanner::decide(const HardwareProfile& profile,
                                const std::vector<std::int64_t>& s) const {
  Decision d;
  d.s = s;
  const std::vector<std::int64_t> zeros(s.size(), 0);
  d.transfer = predict(profile, s, zeros, kChunkTokens, false);
  d.recompute = predict(profile, s, s, kChunkTokens, false);
  {
    const LayerShape layer{model_.h, model_.h_kv, model_.p};
    const double B = profile.h2d_bytes_per_s.y.back();
    const double F = profile.recompute_flops_per_s.y.back();
    d.lower_bound_s = static_cast<double>(model_.n_layers) * lower_bound_s(layer, s, {B, F});
  }
  Plan& plan = d.plan;
  plan.policy = Policy::transfer;
  plan.l = zeros;
  plan.chunk = kChunkTokens;
  d.predicted = d.transfer;
  if (model_.h >= 2 * model_.h_kv) {
    plan.predicted_step_s = d.transfer.total_s;
    plan.reason = str("l = 0: an activation (h = ", model_.h,
                      ") is not smaller than the K,V it replaces (2·h_kv = ", 2 * model_.h_kv,
                      "), so recomputing never saves link time; transfer predicted ",
                      ms(d.transfer.total_s), " per step");
    add_host_split(profile, s, d);
    return d;
  }
  // Every chunk size over a coarse grid of ratios, then a finer grid around the best.
  struct Best {
    double ratio = 0;
    std::int64_t chunk = kChunkTokens;
    StepPrediction p;
  } best{0, kChunkTokens, d.transfer};
  const auto consider = [&](double ratio, std::int64_t chunk) {
    const auto l = splits_for_ratio(s, ratio);
    const auto p = predict(profile, s, l, chunk, false);
    if (p.total_s < best.p.total_s) best = {ratio, chunk, p};
    return p;
  };
  constexpr int kCoarse = 16;
  for (std::int64_t chunk : kChunks) {
    for (int k = 1; k <= kCoarse; ++k) consider(static_cast<double>(k) / kCoarse, chunk);
  }
  const double center = best.ratio;
  for (int k = -8; k <= 8; ++k) {
    const double ratio = center + static_cast<double>(k) / (8.0 * kCoarse);
    if (ratio > 0 && ratio <= 1) consider(ratio, best.chunk);
  }
  for (int k = 0; k <= 32; ++k) {
    const double ratio = static_cast<double>(k) / 32;
    CurvePoint point{ratio, splits_for_ratio(s, ratio), best.chunk, best.chunk == kPaperChunk, {}};
    point.predicted = predict(profile, s, point.l, best.chunk, false);
    d.curve.push_back(std::move(point));
  }
  d.predicted = best.p;
  plan.ratio = best.ratio;
  plan.l = splits_for_ratio(s, best.ratio);
  plan.chunk = best.chunk;
  plan.paper_schedule = best.chunk == kPaperChunk;
  plan.policy = best.ratio == 0   ? Policy::transfer
                : best.ratio == 1 ? Policy::recompute
                                  : Policy::kvpr;
  plan.predicted_step_s = best.p.total_s;
  const bool link_bound =
      best.p.transfer_s >= best.p.recompute_s + best.p.attention_s + best.p.other_s;
  if (best.ratio == 0) {
    plan.reason = str("l = 0: no split beats transferring every K,V (", ms(d.transfer.total_s),
                      " per step predicted; full recompute ", ms(d.recompute.total_s), ")");
  } else {
    plan.reason = str("l/s = ", best.ratio, " with ",
                      plan.paper_schedule ? "the paper schedule" : str(plan.chunk, "-row chunks"),
                      ": ", ms(best.p.total_s), " per step predicted vs ", ms(d.transfer.total_s),
                      " transferring all K,V and ", ms(d.recompute.total_s), " recomputing all; ",
                      link_bound ? "link-bound" : "compute-bound", " (link busy ",
                      ms(best.p.transfer_s), ", recompute ", ms(best.p.recompute_s), ")");
  }
  add_host_split(profile, s, d);
  return d;
}

void ProfilePlanner::add_host_split(const HardwareProfile& profile,
                                    const std::vector<std::int64_t>& s, Decision& d) const {
  Plan& plan = d.plan;
  d.two_way = d.predicted;
  if (profile.host_attn_bytes_per_s <= 0 || profile.host_threads <= 0) {
    plan.reason += "; host attention not measured in the profile: nothing on the host";
    return;
  }
  // The host fraction over a grid, then finer around the best, at the two-way (l, chunk).
  double best_ratio = 0;
  StepPrediction best = d.predicted;
  const auto consider = [&](double host_ratio) {
    const auto m = host_splits_for_ratio(s, plan.l, host_ratio);
    const auto p = predict(profile, s, plan.l, plan.chunk, false, m);
    if (p.total_s < best.total_s) {
      best = p;
      best_ratio = host_ratio;
    }
  };
  constexpr int kCoarse = 32;
  for (int k = 1; k <= kCoarse; ++k) consider(static_cast<double>(k) / kCoarse);
  const double center = best_ratio;
  for (int k = -8; k <= 8; ++k) {
    const double r = center + static_cast<double>(k) / (8.0 * kCoarse);
    if (r > 0 && r <= 1) consider(r);
  }
  const std::string host = str(profile.host_threads, " host threads at ",
                               std::round(profile.host_attn_bytes_per_s / 1e7) / 1e2, " GB/s each");
  if (best_ratio == 0) {
    plan.reason += str("; no host share helps (", host, ")");
    return;
  }
  plan.host_ratio = best_ratio;
  plan.m = host_splits_for_ratio(s, plan.l, best_ratio);
  d.predicted = best;
  plan.predicted_step_s = best.total_s;
  plan.reason += str("; then the oldest ", std::round(best_ratio * 1000) / 10,
                     "% of each context attended on the host (", host, "): ", ms(best.total_s),
                     " per step predicted vs ", ms(d.two_way.total_s), " two-way (host busy ",
                     ms(best.host_attention_s), ", link ", ms(best.transfer_s), ")");
}

Plan ProfilePlanner::plan(const PlanRequest& request) {
  const auto& s = request.s;
  if (request.policy != Policy::kvpr || request.split || request.host_split) {
    Plan fixed = CostModelPlanner(kChunkTokens)
                     .plan(request);  // the policy fixes l (and m); predict it with the profile
    fixed.predicted_step_s =
        predict(s, fixed.l, fixed.chunk, request.policy == Policy::resident, fixed.m).total_s;
    return fixed;
  }
  // Under the cache's lock: the profile read here is the one update_profile's clear() follows.
  Plan plan = cache_.get(request, [&](const PlanRequest& upper) {
    // The worker's share of the node's host threads caps what the profile measured.
    auto profile = current();
    if (upper.host_threads > 0 && upper.host_threads < profile->host_threads) {
      auto shared = std::make_shared<HardwareProfile>(*profile);
      shared->host_threads = upper.host_threads;
      profile = shared;
    }
    Plan planned = decide(*profile, upper.s).plan;
    planned.reason += str(" [planned for contexts up to ", upper.s.back(), " tokens]");
    return planned;
  });
  plan.m.clear();  // the cached m is the bucket's: scale it to these contexts
  if (plan.host_ratio > 0) plan.m = host_splits_for_ratio(s, plan.l, plan.host_ratio);
  plan.predicted_step_s = predict(s, plan.l, plan.chunk, false, plan.m).total_s;
  return plan;
}

}  // namespace kvpr::planner
