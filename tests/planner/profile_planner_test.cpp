// The scheduler on synthetic profiles: link-bound, compute-bound, tiny contexts, b = 1 and large
// b, grouped-query models; and the step model's replay against hand-computed timelines.
#include "kvpr/planner/profile_planner.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kvpr/planner/step_model.h"

namespace kvpr::planner {
namespace {

Curve flat(double y) {
  return {{1, 1e12}, {y, y}};
}

HardwareProfile synthetic(double bytes_per_s, double flops_per_s, std::int64_t h = 4096,
                          std::int64_t h_kv = 4096) {
  HardwareProfile p;
  p.fingerprint = "synthetic";
  p.backend = "synthetic";
  p.h = h;
  p.h_kv = h_kv;
  p.n_heads = 32;
  p.head_dim = h / 32;
  p.ffn = 4 * h;
  p.h2d_bytes_per_s = flat(bytes_per_s);
  p.d2h_bytes_per_s = flat(bytes_per_s);
  p.recompute_flops_per_s = flat(flops_per_s);
  p.attention_s_per_token = 1e-8;
  p.attention_s_per_query = 1e-6;
  p.other_s_per_layer = 1e-4;
  p.other_s_per_row = 1e-5;
  return p;
}

StepShape model(std::int64_t h = 4096, std::int64_t h_kv = 4096) {
  StepShape s;
  s.n_layers = 4;
  s.h = h;
  s.h_kv = h_kv;
  s.ffn = 4 * h;
  s.p = 2;
  s.block_tokens = 16;
  return s;
}

TEST(StepModel, TransferOnlyStepIsLinkTimePlusTheComputeThatCannotOverlap) {
  HardwareProfile p = synthetic(1e9, 1e12, 64, 64);
  p.attention_s_per_token = 0;
  p.attention_s_per_query = 0;
  p.other_s_per_layer = 0;
  p.other_s_per_row = 0;
  StepShape shape = model(64, 64);
  shape.n_layers = 1;
  shape.s = {32};
  shape.l = {0};
  const auto t = predict_step(p, shape);
  // 32 rows of K and of V, 64 fp16 each, plus 3 write-back rows: all at 1 GB/s, nothing overlaps.
  const double expected = (2.0 * 32 * 64 * 2 + 3.0 * 64 * 2) / 1e9;
  EXPECT_NEAR(t.total_s, expected, 1e-12);
  EXPECT_NEAR(t.transfer_s, expected, 1e-12);
  EXPECT_EQ(t.recompute_s, 0);
}

TEST(StepModel, PipelinedChunksBeatThePaperSchedule) {
  const HardwareProfile p = synthetic(16e9, 50e12);
  StepShape shape = model();
  shape.s = {2048};
  shape.l = {1024};
  shape.chunk = 64;
  const auto pipelined = predict_step(p, shape);
  shape.chunk = 1 << 30;
  const auto paper = predict_step(p, shape);
  EXPECT_LT(pipelined.total_s, paper.total_s);
  EXPECT_NEAR(pipelined.recompute_s, paper.recompute_s, 1e-9);
}

TEST(ProfilePlanner, LinkBoundRecomputesMostOfTheContext) {
  ProfilePlanner planner(synthetic(16e9, 300e12), model());
  const auto d = planner.decide({4096});
  EXPECT_NE(d.plan.policy, Policy::transfer);  // kvpr, or recompute when l = s is best
  EXPECT_GT(d.plan.ratio, 0.5);
  EXPECT_LT(d.predicted.total_s, 0.8 * d.transfer.total_s);
  EXPECT_NE(d.plan.reason.find("link-bound"), std::string::npos) << d.plan.reason;
  // The choice is the minimum of the curve it reports.
  for (const auto& point : d.curve)
    EXPECT_GE(point.predicted.total_s, d.predicted.total_s * (1 - 1e-9));
}

TEST(ProfilePlanner, ComputeBoundRecomputesLittleOrNothing) {
  ProfilePlanner planner(synthetic(32e9, 0.2e12), model());
  const auto d = planner.decide({4096});
  EXPECT_LT(d.plan.ratio, 0.1);
  EXPECT_LE(d.predicted.total_s, d.transfer.total_s);
}

TEST(ProfilePlanner, TinyContextsAndLargeBatches) {
  ProfilePlanner planner(synthetic(16e9, 100e12), model());
  const auto tiny = planner.decide({3});
  EXPECT_LE(tiny.predicted.total_s, tiny.transfer.total_s);
  const std::vector<std::int64_t> big(64, 1024);
  const auto large = planner.decide(big);
  ASSERT_EQ(large.plan.l.size(), 64u);
  EXPECT_LE(large.predicted.total_s, large.transfer.total_s);
  EXPECT_LE(large.predicted.total_s, large.recompute.total_s);
}

TEST(ProfilePlanner, GroupedQueryPlansZeroWithItsReason) {
  ProfilePlanner planner(synthetic(16e9, 300e12, 4096, 1024), model(4096, 1024));
  const auto d = planner.decide({4096, 512});
  EXPECT_EQ(d.plan.l, (std::vector<std::int64_t>{0, 0}));
  EXPECT_NE(d.plan.reason.find("l = 0"), std::string::npos);
  EXPECT_NE(d.plan.reason.find("2·h_kv = 2048"), std::string::npos) << d.plan.reason;
}

TEST(ProfilePlanner, PlansAreCachedByBucketAndScaledToTheContext) {
  ProfilePlanner planner(synthetic(16e9, 300e12), model(), 64);
  PlanRequest r;
  r.policy = Policy::kvpr;
  r.s = {1000};
  const auto a = planner.plan(r);
  r.s = {1010};  // same bucket
  const auto b = planner.plan(r);
  EXPECT_EQ(planner.plans_computed(), 1);
  EXPECT_EQ(a.ratio, b.ratio);
  EXPECT_EQ(b.l.front(), std::llround(b.ratio * 1010));
  r.s = {1100};  // past the bucket: re-plan
  planner.plan(r);
  EXPECT_EQ(planner.plans_computed(), 2);
}

TEST(ProfilePlanner, RejectsAProfileOfAnotherShape) {
  EXPECT_THROW(ProfilePlanner(synthetic(1e9, 1e12, 64, 64), model()), std::exception);
}

}  // namespace
}  // namespace kvpr::planner
