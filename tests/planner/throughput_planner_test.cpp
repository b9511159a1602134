// Throughput mode's planner on a synthetic profile (a 16 GB/s link, 300 TFLOP/s of recompute, an
// OPT-6.7B-wide layer): it plans within the device budget, recomputes where that beats FlexGen's
// transfer, keeps weights on the device when they fit, and predicts what it chose by the replay.
#include "kvpr/planner/throughput_planner.h"

#include <gtest/gtest.h>

#include "kvpr/common/error.h"
#include "synthetic_profile.h"

namespace kvpr::planner {
namespace {

WeightLayout opt_layout(std::int64_t h) {
  const auto hh = static_cast<std::uint64_t>(h * h);
  WeightLayout w;
  w.fixed_device_bytes = 1ull << 20;
  for (const std::uint64_t n : {hh, hh, hh, hh, 4 * hh, 4 * hh})
    w.matrices.push_back({4 * n, 2 * n});
  return w;
}

ThroughputRequest request(std::uint64_t budget, Policy policy = Policy::kvpr) {
  ThroughputRequest r;
  r.model = testing::model_shape();
  r.weights = opt_layout(4096);
  r.sequences = 64;
  r.context = 512;
  r.device_memory = budget;
  r.policy = policy;
  r.working_set = [](std::int64_t batch, std::int64_t) {
    return static_cast<std::uint64_t>(batch) * (64ull << 20);
  };
  return r;
}

TEST(ThroughputPlanner, WeightLayoutSharesFollowThePlacementRule) {
  const WeightLayout w = opt_layout(64);
  const auto f = w.fractions();
  ASSERT_EQ(f.size(), 7u);
  EXPECT_EQ(f.front(), 0.0);
  EXPECT_DOUBLE_EQ(f.back(), 1.0);
  const std::uint64_t layer = 12 * 64 * 64 * 4;
  EXPECT_EQ(w.resident_bytes(1.0, 3), 3 * layer);
  EXPECT_EQ(w.slot_bytes(1.0), 0u);
  EXPECT_EQ(w.resident_bytes(0.0, 3), 0u);
  EXPECT_EQ(w.slot_bytes(0.0), layer);
  EXPECT_EQ(w.streamed_host_bytes(0.0), layer / 2);
  // A share of 1/3: q, k, v, o resident (4 of 12 h²), the FFN streamed.
  EXPECT_EQ(w.resident_bytes(f[4], 1), 4ull * 64 * 64 * 4);
}

TEST(ThroughputPlanner, RecomputeBeatsTransferOnASlowLinkWithinTheBudget) {
  const HardwareProfile profile = testing::synthetic_profile();
  // Room for the weights of 4 layers streamed and a few batches' buffers, not all weights.
  const ThroughputRequest kvpr = request(6ull << 30);
  const auto plan = plan_throughput(profile, kvpr);
  const auto flexgen = plan_throughput(profile, request(6ull << 30, Policy::transfer));
  EXPECT_GT(plan.best.ratio, 0.0) << plan.reason;
  EXPECT_EQ(flexgen.best.ratio, 0.0);
  EXPECT_GT(plan.best.tokens_per_s, flexgen.best.tokens_per_s) << plan.reason;
  EXPECT_FALSE(plan.options.empty());
  for (const auto& o : plan.options) {
    EXPECT_LE(o.device_bytes, kvpr.device_memory);
    EXPECT_LE(o.micro_batch * o.micro_batches, kvpr.sequences);
    EXPECT_LE(o.tokens_per_s, plan.best.tokens_per_s);
  }
  // The plan's prediction is the replay of what it chose.
  const auto again = predict_throughput_step(profile, kvpr, plan.best);
  EXPECT_DOUBLE_EQ(again.total_s, plan.best.predicted.total_s);
  EXPECT_NE(plan.reason.find("micro-batches"), std::string::npos) << plan.reason;
}

TEST(ThroughputPlanner, WeightsStayOnTheDeviceWhenTheyFitAndStreamWhenNot) {
  const HardwareProfile profile = testing::synthetic_profile();
  const auto roomy = plan_throughput(profile, request(0));  // no budget
  EXPECT_EQ(roomy.best.weight_fraction, 1.0);
  EXPECT_EQ(roomy.best.predicted.weights_s, 0.0);
  const auto tight = plan_throughput(profile, request(3ull << 30));
  EXPECT_LT(tight.best.weight_fraction, 1.0);
  EXPECT_GT(tight.best.predicted.weights_s, 0.0);
  // Streaming weights costs link time: the roomy plan is never slower.
  EXPECT_GE(roomy.best.tokens_per_s, tight.best.tokens_per_s);
}

TEST(ThroughputPlanner, FixedChoicesAreKeptAndAnImpossibleBudgetIsAnError) {
  const HardwareProfile profile = testing::synthetic_profile();
  ThroughputRequest r = request(6ull << 30);
  r.micro_batch = 8;
  r.micro_batches = 1;
  r.weight_fraction = 0;
  const auto plan = plan_throughput(profile, r);
  ASSERT_EQ(plan.options.size(), 1u);
  EXPECT_EQ(plan.best.micro_batch, 8);
  EXPECT_EQ(plan.best.micro_batches, 1);
  EXPECT_EQ(plan.best.weight_fraction, 0.0);
  try {
    plan_throughput(profile, request(1ull << 20));
    ADD_FAILURE() << "a 1 MiB budget was planned for";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1048576"), std::string::npos) << e.what();
  }
}

// Grouped-query (h_kv = h/4: recomputing never pays) with a host that scans K,V faster than the
// link moves them: the block schedule puts part of every micro-batch's context on the host, and
// the plan's tokens/s are those of its replay; a weak host and the FlexGen-style baseline keep
// every K,V on the link.
TEST(ThroughputPlanner, AFastHostTakesAShareOfEachContextAndAWeakOneNone) {
  HardwareProfile profile = testing::synthetic_profile("synthetic-gqa", 4096, 1024);
  profile.host_attn_bytes_per_s = 10e9;
  profile.host_threads = 4;
  ThroughputRequest r = request(6ull << 30);
  r.model = testing::model_shape(4096, 1024);
  r.sequences = 16;
  r.context = 2048;
  const auto plan = plan_throughput(profile, r);
  EXPECT_EQ(plan.best.ratio, 0.0) << plan.reason;
  EXPECT_GT(plan.best.host_ratio, 0.0) << plan.reason;
  EXPECT_GT(plan.best.predicted.host_attention_s, 0.0);
  EXPECT_NE(plan.reason.find("on the host"), std::string::npos) << plan.reason;
  const auto again = predict_throughput_step(profile, r, plan.best);
  EXPECT_DOUBLE_EQ(again.total_s, plan.best.predicted.total_s);

  HardwareProfile no_host = profile;
  no_host.host_threads = 0;
  const auto two_way = plan_throughput(no_host, r);
  EXPECT_EQ(two_way.best.host_ratio, 0.0);
  EXPECT_GT(plan.best.tokens_per_s, 1.2 * two_way.best.tokens_per_s)
      << plan.reason << " / " << two_way.reason;

  HardwareProfile weak = profile;
  weak.host_attn_bytes_per_s = 1e8;
  weak.host_threads = 1;
  EXPECT_EQ(plan_throughput(weak, r).best.host_ratio, 0.0);
  r.policy = Policy::transfer;
  EXPECT_EQ(plan_throughput(profile, r).best.host_ratio, 0.0);
}

}  // namespace
}  // namespace kvpr::planner
