#include "kvpr/planner/cost_model.h"

#include <gtest/gtest.h>

namespace kvpr::planner {
namespace {

TEST(CostModel, BytesAndFlopsFollowTheFormulas) {
  const LayerShape shape{64, 32, 2};
  const std::vector<std::int64_t> s{10, 20};
  const std::vector<std::int64_t> l{4, 30};  // the second is clamped to 20
  const auto c = layer_cost(shape, s, l, {1e9, 1e12}, 8);
  EXPECT_DOUBLE_EQ(c.activation_bytes, (4 + 20) * 64 * 2);
  EXPECT_DOUBLE_EQ(c.kv_bytes, (6 + 0) * 2 * 32 * 2);
  EXPECT_DOUBLE_EQ(c.recompute_flops, 4.0 * 24 * 64 * 32);
  EXPECT_DOUBLE_EQ(c.transfer_s, (c.activation_bytes + c.kv_bytes) / 1e9);
  EXPECT_DOUBLE_EQ(c.paper_s, c.activation_bytes / 1e9 + std::max(c.recompute_s, c.kv_bytes / 1e9));
  EXPECT_GT(c.pipelined_s, std::max(c.transfer_s, c.recompute_s));  // plus the fill
}

TEST(CostModel, LowerBoundHalvesTheLinkForMultiHeadWhenComputeIsFree) {
  const LayerShape shape{1024, 1024, 2};
  const std::vector<std::int64_t> s{1000};
  const Rates rates{1e9, 1e18};
  const double transfer_all = 1000.0 * 2 * 1024 * 2 / 1e9;
  EXPECT_NEAR(lower_bound_s(shape, s, rates), transfer_all / 2, transfer_all * 0.01);
}

TEST(CostModel, SplitsForRatioRoundAndClamp) {
  const std::vector<std::int64_t> s{0, 1, 10, 101};
  EXPECT_EQ(splits_for_ratio(s, 0.5), (std::vector<std::int64_t>{0, 1, 5, 51}));
  EXPECT_EQ(splits_for_ratio(s, 1.0), s);
}

}  // namespace
}  // namespace kvpr::planner
