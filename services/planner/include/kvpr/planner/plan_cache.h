// Plans cached by shape bucket, shared by ProfilePlanner and CachingPlanner. Requests that agree on
// the batch size, policy, fixed split, layer shape, layer count and rates, and whose every context
// length rounds up to the same multiple of `bucket` tokens, share one plan. It is made once for
// the bucket's upper end (each s rounded up: the contexts grow into it) and scaled to each
// request's contexts: a fixed split is clamped to each s, otherwise l_i = ratio · s_i clamped to
// [0, s_i]. Thread-safe; a miss computes under the cache's lock, so concurrent requests for one
// bucket plan it once. An exception from the computation leaves the cache unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "kvpr/planner/planner.h"

namespace kvpr::planner {

// Tokens per shape bucket: a worker re-plans when a context grows past a multiple of this.
inline constexpr std::int64_t kPlanBucketTokens = 64;
// Plans one cache holds; a miss past it starts the cache afresh (what a peer sending ever new
// shapes can make a planner hold is bounded; a worker's own shapes refill it in a few steps).
inline constexpr std::size_t kMaxCachedPlans = 4096;

class PlanCache {
 public:
  explicit PlanCache(std::int64_t bucket = kPlanBucketTokens);

  // `compute` gets the request with each s rounded up to the bucket's end.
  using Compute = std::function<Plan(const PlanRequest& upper)>;
  Plan get(const PlanRequest& request, const Compute& compute);

  std::int64_t bucket() const { return bucket_; }
  std::int64_t hits() const;
  std::int64_t misses() const;  // plans computed
  std::size_t size() const;
  // Forgets every plan (the rates they were made with changed); waits for a plan being computed.
  void clear();

 private:
  std::vector<std::int64_t> key(const PlanRequest& request) const;

  std::int64_t bucket_;
  mutable std::mutex mutex_;
  std::map<std::vector<std::int64_t>, Plan> plans_;  // l as made for the bucket's upper end
  std::int64_t hits_ = 0;
  std::int64_t misses_ = 0;
};

// The splits of a plan made for other context lengths, applied to `request.s` (see above).
std::vector<std::int64_t> scale_splits(const Plan& plan, const PlanRequest& request);

}  // namespace kvpr::planner
