// A Planner decorator that caches the plans of any other Planner by shape bucket (PlanCache: the
// batch size, policy, fixed split and each context length rounded up to `bucket` tokens), so a
// worker asks its planner — in-process or a remote replica — only when its contexts grow past a
// bucket. A cached plan's splits are scaled to the request's contexts; its predicted_step_s is the
// inner planner's prediction for the bucket's upper end.
//
// Borrows `inner`, which must outlive it. Thread-safe when `inner` is; a miss calls `inner` under
// the cache's lock, so concurrent requests for one bucket reach it once. Errors from `inner` pass
// through and cache nothing.
#pragma once

#include <cstdint>

#include "kvpr/planner/plan_cache.h"
#include "kvpr/planner/planner.h"

namespace kvpr::planner {

class CachingPlanner final : public Planner {
 public:
  explicit CachingPlanner(Planner& inner, std::int64_t bucket = kPlanBucketTokens);

  Plan plan(const PlanRequest& request) override;
  // Forgets the cached plans: the inner planner's rates changed (a refitted profile reported).
  void clear() { cache_.clear(); }

  std::int64_t hits() const { return cache_.hits(); }
  std::int64_t misses() const { return cache_.misses(); }
  std::int64_t bucket() const { return cache_.bucket(); }

 private:
  Planner& inner_;
  PlanCache cache_;
};

}  // namespace kvpr::planner
