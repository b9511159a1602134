#include "kvpr/planner/fallback_planner.h"

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::planner {

FallbackPlanner::FallbackPlanner(Planner& primary, Planner& local, std::chrono::milliseconds retry)
    : primary_(primary), local_(local), retry_(retry) {
  if (retry_.count() < 0) fail("fallback planner: retry ", retry_.count(), " ms is < 0");
}

void FallbackPlanner::on_fallback(std::function<void()> hook) {
  std::lock_guard lock(mutex_);
  hook_ = std::move(hook);
}

std::int64_t FallbackPlanner::fallbacks() const {
  std::lock_guard lock(mutex_);
  return fallbacks_;
}

std::int64_t FallbackPlanner::outages() const {
  std::lock_guard lock(mutex_);
  return outages_;
}

bool FallbackPlanner::in_outage() const {
  std::lock_guard lock(mutex_);
  return outage_;
}

Plan FallbackPlanner::plan(const PlanRequest& request) {
  bool skip = false;
  {
    std::lock_guard lock(mutex_);
    skip = outage_ && Clock::now() < retry_at_;
  }
  if (skip) return fall_back(request, {});
  Plan plan;
  try {
    plan = primary_.plan(request);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::disconnected) throw;
    return fall_back(request, e.what());
  }
  std::int64_t ended_after = -1;
  {
    std::lock_guard lock(mutex_);
    if (outage_) {
      outage_ = false;
      ended_after = fallbacks_;
    }
  }
  if (ended_after >= 0) {
    log::info("planner: a replica answers again; ", ended_after,
              " plan(s) made locally since the worker started");
  }
  return plan;
}

Plan FallbackPlanner::fall_back(const PlanRequest& request, std::string_view why) {
  Plan plan = local_.plan(request);  // its errors pass through, uncounted
  bool starts = false;
  std::function<void()> hook;
  {
    std::lock_guard lock(mutex_);
    starts = !outage_;
    outage_ = true;
    if (!why.empty()) retry_at_ = Clock::now() + retry_;
    if (starts) ++outages_;
    ++fallbacks_;
    hook = hook_;
  }
  if (starts) {
    log::warn("planner: no replica answers (", why,
              "); planning with the worker's own cost model until one does, asking again every ",
              retry_.count(), " ms");
  }
  if (hook) hook();
  plan.reason = str("local fallback, no planner replica answered: ", plan.reason);
  return plan;
}

}  // namespace kvpr::planner
