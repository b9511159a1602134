#include "kvpr/planner/plan_cache.h"

#include <algorithm>
#include <bit>
#include <numeric>

#include "kvpr/planner/cost_model.h"

namespace kvpr::planner {

PlanCache::PlanCache(std::int64_t bucket) : bucket_(std::max<std::int64_t>(bucket, 1)) {}

std::vector<std::int64_t> PlanCache::key(const PlanRequest& request) const {
  std::vector<std::int64_t> k{static_cast<std::int64_t>(request.s.size()),
                              static_cast<std::int64_t>(request.policy),
                              request.split.value_or(-1),
                              request.host_split.value_or(-1),
                              request.host_threads,
                              request.n_layers,
                              request.shape.h,
                              request.shape.h_kv,
                              request.shape.p,
                              std::bit_cast<std::int64_t>(request.rates.bytes_per_s),
                              std::bit_cast<std::int64_t>(request.rates.flops_per_s)};
  for (auto si : request.s) k.push_back((std::max<std::int64_t>(si, 0) + bucket_ - 1) / bucket_);
  return k;
}

Plan PlanCache::get(const PlanRequest& request, const Compute& compute) {
  auto k = key(request);
  std::lock_guard lock(mutex_);
  auto it = plans_.find(k);
  if (it != plans_.end()) {
    ++hits_;
  } else {
    PlanRequest upper = request;
    for (auto& si : upper.s) si = (std::max<std::int64_t>(si, 0) + bucket_ - 1) / bucket_ * bucket_;
    Plan planned = compute(upper);
    // A planner that did not say which ratio its splits follow: the one they make on the whole.
    const auto l_sum = std::accumulate(planned.l.begin(), planned.l.end(), std::int64_t{0});
    const auto s_sum = std::accumulate(upper.s.begin(), upper.s.end(), std::int64_t{0});
    if (planned.ratio == 0 && l_sum > 0 && s_sum > 0) {
      planned.ratio = static_cast<double>(l_sum) / static_cast<double>(s_sum);
    }
    if (plans_.size() >= kMaxCachedPlans) plans_.clear();
    it = plans_.emplace(std::move(k), std::move(planned)).first;
    ++misses_;
  }
  Plan plan = it->second;
  plan.l = scale_splits(plan, request);
  // The host splits follow the l of these contexts: a fixed m clamped to [l, s], else the share
  // of [l, s) the bucket's plan sent to the host.
  plan.m.clear();
  if (request.host_split && request.policy != Policy::resident) {
    for (std::size_t i = 0; i < request.s.size(); ++i) {
      plan.m.push_back(std::clamp<std::int64_t>(*request.host_split, plan.l[i], request.s[i]));
    }
  } else if (plan.host_ratio > 0) {
    plan.m = host_splits_for_ratio(request.s, plan.l, plan.host_ratio);
  }
  return plan;
}

std::int64_t PlanCache::hits() const {
  std::lock_guard lock(mutex_);
  return hits_;
}

std::int64_t PlanCache::misses() const {
  std::lock_guard lock(mutex_);
  return misses_;
}

std::size_t PlanCache::size() const {
  std::lock_guard lock(mutex_);
  return plans_.size();
}

void PlanCache::clear() {
  std::lock_guard lock(mutex_);
  plans_.clear();
}

std::vector<std::int64_t> scale_splits(const Plan& plan, const PlanRequest& request) {
  const auto& s = request.s;
  switch (plan.policy) {
    case Policy::resident:
    case Policy::transfer:
      // NOLINTNEXTLINE(modernize-return-braced-init-list): braces would pick the list constructor
      return std::vector<std::int64_t>(s.size(), 0);
    case Policy::recompute:
      return s;
    case Policy::kvpr:
      break;
  }
  if (request.policy == Policy::kvpr && request.split) {
    std::vector<std::int64_t> l(s.size());
    for (std::size_t i = 0; i < s.size(); ++i)
      l[i] = std::clamp<std::int64_t>(*request.split, 0, s[i]);
    return l;
  }
  return splits_for_ratio(s, std::clamp(plan.ratio, 0.0, 1.0));
}

}  // namespace kvpr::planner
