#include "kvpr/planner/caching_planner.h"

namespace kvpr::planner {

CachingPlanner::CachingPlanner(Planner& inner, std::int64_t bucket)
    : inner_(inner), cache_(bucket) {}

Plan CachingPlanner::plan(const PlanRequest& request) {
  return cache_.get(request, [&](const PlanRequest& upper) { return inner_.plan(upper); });
}

}  // namespace kvpr::planner
