// CachingPlanner: one inner plan per shape bucket (batch size, policy, split, each context rounded
// up to the bucket), splits scaled to each request's contexts, errors not cached.
#include "kvpr/planner/caching_planner.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

// Recomputes a quarter of every context and counts the requests it sees.
class CountingPlanner final : public Planner {
 public:
  Plan plan(const PlanRequest& request) override {
    ++calls;
    last_s = request.s;
    if (fail_next) {
      fail_next = false;
      fail("inner planner failed");
    }
    Plan plan = CostModelPlanner().plan(request);
    if (request.policy == Policy::kvpr && !request.split) {
      plan.ratio = 0.25;
      plan.l = splits_for_ratio(request.s, 0.25);
    }
    return plan;
  }
  int calls = 0;
  bool fail_next = false;
  std::vector<std::int64_t> last_s;
};

PlanRequest request(std::vector<std::int64_t> s, Policy policy = Policy::kvpr) {
  PlanRequest r;
  r.shape = {4096, 4096, 2};
  r.n_layers = 4;
  r.s = std::move(s);
  r.policy = policy;
  r.rates = {16e9, 300e12};
  return r;
}

TEST(CachingPlanner, OnePlanPerBucketScaledToTheContexts) {
  CountingPlanner inner;
  CachingPlanner cached(inner, 64);
  const auto a = cached.plan(request({100, 1000}));
  EXPECT_EQ(inner.last_s, (std::vector<std::int64_t>{128, 1024}));  // planned for the bucket end
  EXPECT_EQ(a.l, (std::vector<std::int64_t>{25, 250}));
  const auto b = cached.plan(request({120, 1010}));
  EXPECT_EQ(b.l, (std::vector<std::int64_t>{30, std::llround(0.25 * 1010)}));
  EXPECT_EQ(inner.calls, 1);
  EXPECT_EQ(cached.hits(), 1);
  EXPECT_EQ(cached.misses(), 1);

  cached.plan(request({129, 1000}));     // past the first sequence's bucket
  cached.plan(request({100, 1000, 5}));  // another batch size
  EXPECT_EQ(inner.calls, 3);
  EXPECT_EQ(cached.misses(), 3);
}

TEST(CachingPlanner, PolicyAndSplitArePartOfTheBucket) {
  CountingPlanner inner;
  CachingPlanner cached(inner);
  EXPECT_EQ(cached.plan(request({100}, Policy::recompute)).l, (std::vector<std::int64_t>{100}));
  EXPECT_EQ(cached.plan(request({110}, Policy::recompute)).l, (std::vector<std::int64_t>{110}));
  EXPECT_EQ(cached.plan(request({110}, Policy::transfer)).l, (std::vector<std::int64_t>{0}));
  auto fixed = request({100, 30});
  fixed.split = 40;
  EXPECT_EQ(cached.plan(fixed).l, (std::vector<std::int64_t>{40, 30}));  // clamped to each s
  fixed.s = {120, 50};
  EXPECT_EQ(cached.plan(fixed).l, (std::vector<std::int64_t>{40, 40}));
  fixed.split = 41;
  cached.plan(fixed);
  EXPECT_EQ(inner.calls, 4);  // recompute, transfer, split 40, split 41
  EXPECT_EQ(cached.hits(), 2);
}

TEST(CachingPlanner, ErrorsPassThroughAndAreNotCached) {
  CountingPlanner inner;
  CachingPlanner cached(inner);
  inner.fail_next = true;
  EXPECT_THROW(cached.plan(request({100})), Error);
  EXPECT_EQ(cached.plan(request({100})).l, (std::vector<std::int64_t>{25}));
  EXPECT_EQ(inner.calls, 2);
  EXPECT_EQ(cached.misses(), 1);
}

TEST(CachingPlanner, OverTheCostModelGivesItsRatio) {
  CostModelPlanner model;
  CachingPlanner cached(model);
  const auto direct = model.plan(request({1000, 2000}));
  EXPECT_GT(direct.ratio, 0);
  const auto plan = cached.plan(request({1000, 2000}));
  EXPECT_EQ(plan.l, splits_for_ratio(std::vector<std::int64_t>{1000, 2000}, plan.ratio));
}

}  // namespace
}  // namespace kvpr::planner
