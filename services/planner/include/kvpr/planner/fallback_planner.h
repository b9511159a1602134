// A Planner decorator that keeps a worker planning when its planner replicas are gone: plan() asks
// `primary` (RemotePlanner) and, when it fails `disconnected` (no replica answered in time), plans
// with `local` instead — the worker's own cost model or profile scheduler, the planner the
// embedded runtime uses. Any other error from `primary` (a request a replica refuses) passes
// through: the local planner would not know better.
//
// An outage starts with the first fallback and ends with the first plan a replica gives again:
// one warning line when it starts and one info line when it ends, not one per plan. During an
// outage `primary` is asked again at most once per `retry` (a dead replica costs its whole
// timeout), and plans in between come from `local` at once. Every plan made by `local` in place
// of `primary` is a fallback: counted, and reported to the hook (the worker's
// kvpr_planner_fallbacks_total).
//
// Borrows both planners, which must outlive it. Thread-safe when they are; `primary` is never
// called under the decorator's lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>

#include "kvpr/planner/planner.h"

namespace kvpr::planner {

class FallbackPlanner final : public Planner {
 public:
  using Clock = std::chrono::steady_clock;

  FallbackPlanner(Planner& primary, Planner& local,
                  std::chrono::milliseconds retry = std::chrono::milliseconds(2000));

  Plan plan(const PlanRequest& request) override;

  // Called after each fallback, on the planning thread, outside the lock. Set it before the
  // planner is used (the worker service sets it when it is constructed).
  void on_fallback(std::function<void()> hook);

  std::int64_t fallbacks() const;
  std::int64_t outages() const;  // outages seen so far, the current one included
  bool in_outage() const;

 private:
  // Plans with `local` and counts it; `why`: the primary's failure (empty: skipped, in an outage).
  Plan fall_back(const PlanRequest& request, std::string_view why);

  Planner& primary_;
  Planner& local_;
  std::chrono::milliseconds retry_;
  std::function<void()> hook_;

  mutable std::mutex mutex_;  // guards what follows
  bool outage_ = false;
  Clock::time_point retry_at_{};
  std::int64_t fallbacks_ = 0;
  std::int64_t outages_ = 0;
};

}  // namespace kvpr::planner
