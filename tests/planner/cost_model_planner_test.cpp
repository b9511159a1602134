#include <gtest/gtest.h>

#include "kvpr/common/error.h"
#include "kvpr/planner/planner.h"

namespace kvpr::planner {
namespace {

PlanRequest request(std::int64_t h, std::int64_t h_kv, std::vector<std::int64_t> s, Rates rates) {
  PlanRequest r;
  r.shape = {h, h_kv, 2};
  r.n_layers = 4;
  r.s = std::move(s);
  r.policy = Policy::kvpr;
  r.rates = rates;
  return r;
}

TEST(CostModelPlanner, LinkBoundMultiHeadRecomputesAboutHalfTheRatioOfRates) {
  // Slow link, fast compute: recompute pays; with recompute nearly free the optimum moves l to
  // where activations + remaining K,V are smallest, i.e. most of the context.
  CostModelPlanner planner(16);
  const auto plan = planner.plan(request(4096, 4096, {1024, 2048}, {16e9, 300e12}));
  ASSERT_EQ(plan.l.size(), 2u);
  EXPECT_GT(plan.l[0], 900);
  EXPECT_GT(plan.l[1], 1800);
  EXPECT_NE(plan.reason.find("link-bound"), std::string::npos) << plan.reason;
  // The choice beats both extremes under the model.
  const auto chosen = layer_cost({4096, 4096, 2}, std::vector<std::int64_t>{1024, 2048}, plan.l,
                                 {16e9, 300e12}, 16);
  const auto none = layer_cost({4096, 4096, 2}, std::vector<std::int64_t>{1024, 2048},
                               std::vector<std::int64_t>{0, 0}, {16e9, 300e12}, 16);
  EXPECT_LT(chosen.pipelined_s, none.pipelined_s);
}

TEST(CostModelPlanner, SlowComputeRecomputesNothing) {
  // Recompute so slow that the pipeline fill costs more than the link time it could save.
  CostModelPlanner planner(16);
  const auto plan = planner.plan(request(4096, 4096, {4096}, {25e9, 2e12}));
  EXPECT_EQ(plan.l, (std::vector<std::int64_t>{0}));
}

TEST(CostModelPlanner, BalancedSplitEqualisesLinkAndRecompute) {
  // Compute and link of the same order: the best split balances (A+K)/B against recompute time.
  CostModelPlanner planner(16);
  const Rates rates{25e9, 20e12};
  const auto plan = planner.plan(request(4096, 4096, {4096}, rates));
  const auto c = layer_cost({4096, 4096, 2}, std::vector<std::int64_t>{4096}, plan.l, rates, 16);
  EXPECT_GT(plan.l[0], 0);
  EXPECT_LT(plan.l[0], 4096);
  EXPECT_NEAR(c.transfer_s, c.recompute_s, 0.05 * c.transfer_s);
}

TEST(CostModelPlanner, GroupedQueryChoosesZeroAndSaysWhy) {
  CostModelPlanner planner;
  const auto plan = planner.plan(request(4096, 1024, {4096, 100}, {16e9, 300e12}));
  EXPECT_EQ(plan.l, (std::vector<std::int64_t>{0, 0}));
  EXPECT_NE(plan.reason.find("l = 0"), std::string::npos) << plan.reason;
  EXPECT_NE(plan.reason.find("2·h_kv = 2048"), std::string::npos) << plan.reason;
}

TEST(CostModelPlanner, FixedSplitIsClampedPerSequence) {
  CostModelPlanner planner;
  auto r = request(64, 64, {5, 40, 0}, {1e9, 1e9});
  r.split = 17;
  EXPECT_EQ(planner.plan(r).l, (std::vector<std::int64_t>{5, 17, 0}));
  r.policy = Policy::recompute;
  EXPECT_EQ(planner.plan(r).l, (std::vector<std::int64_t>{5, 40, 0}));
  r.policy = Policy::transfer;
  EXPECT_EQ(planner.plan(r).l, (std::vector<std::int64_t>{0, 0, 0}));
}

TEST(CostModelPlanner, PolicyNames) {
  EXPECT_EQ(parse_policy("kvpr"), Policy::kvpr);
  EXPECT_EQ(to_string(parse_policy("resident")), "resident");
  try {
    parse_policy("flexgen");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'flexgen'"), std::string::npos);
  }
}

}  // namespace
}  // namespace kvpr::planner
