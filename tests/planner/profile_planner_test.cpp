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

// The three-way split on synthetic profiles (issue 14).
HardwareProfile with_host(HardwareProfile p, double bytes_per_s_per_thread, std::int64_t threads) {
  p.host_attn_bytes_per_s = bytes_per_s_per_thread;
  p.host_threads = threads;
  return p;
}

TEST(StepModel, HostAttentionTakesItsBytesAtTheHostRateBesideTheLink) {
  const HardwareProfile p = with_host(synthetic(16e9, 300e12, 4096, 1024), 8e9, 2);
  StepShape shape = model(4096, 1024);
  shape.s = {1000, 600};
  shape.l = {0, 0};
  shape.m = {600, 600};  // 400 + 0 rows on the host
  int host_spans = 0;
  const auto t = predict_step(p, shape, [&](const PredictedSpan& span) {
    if (span.kind == OpKind::host_attend) {
      EXPECT_TRUE(span.host);
      EXPECT_NEAR(span.end_s - span.begin_s, 400.0 * 2 * 1024 * 2 / 16e9, 1e-12);
      ++host_spans;
    }
  });
  EXPECT_EQ(host_spans, 4);  // one per layer
  EXPECT_NEAR(t.host_attention_s, 4 * 400.0 * 2 * 1024 * 2 / 16e9, 1e-12);
  shape.m = {};
  const auto two_way = predict_step(p, shape);
  EXPECT_EQ(two_way.host_attention_s, 0);
  EXPECT_LT(t.transfer_s, two_way.transfer_s);  // 400 rows fewer on the link per layer
}

TEST(ProfilePlanner, SlowLinkAndFastHostMovesGroupedQueryTokensToTheHost) {
  // LLaMA-3-like heads (h_kv = h/4): recompute never pays; the host scans 4× the link's rate.
  ProfilePlanner planner(with_host(synthetic(16e9, 300e12, 4096, 1024), 16e9, 4),
                         model(4096, 1024));
  const auto d = planner.decide({4096, 2048});
  EXPECT_EQ(d.plan.l, (std::vector<std::int64_t>{0, 0}));
  ASSERT_EQ(d.plan.m.size(), 2u);
  EXPECT_LT(d.plan.m[0], 4096 / 2);  // most of the context goes to the host
  EXPECT_GT(d.plan.host_ratio, 0.5);
  EXPECT_LT(d.predicted.total_s, 0.7 * d.transfer.total_s);
  EXPECT_NE(d.plan.reason.find("attended on the host"), std::string::npos) << d.plan.reason;
  // The choice is within the grid's reach of the best point of a sweep of m.
  double best = 1e300;
  for (int k = 0; k <= 256; ++k) {
    const auto m = host_splits_for_ratio(std::vector<std::int64_t>{4096, 2048}, d.plan.l,
                                         static_cast<double>(k) / 256);
    best = std::min(best, planner.predict({4096, 2048}, d.plan.l, d.plan.chunk, false, m).total_s);
  }
  EXPECT_LE(d.predicted.total_s, 1.01 * best);
  // The planner's plan() carries m scaled to the request's contexts.
  PlanRequest r;
  r.policy = Policy::kvpr;
  r.s = {3000};
  const auto plan = planner.plan(r);
  ASSERT_EQ(plan.m.size(), 1u);
  EXPECT_EQ(plan.m[0], 3000 - std::llround(plan.host_ratio * 3000));
}

TEST(ProfilePlanner, WeakHostKeepsTokensOnTheLink) {
  // One thread at 1 GB/s beside a 16 GB/s link: at most its small share goes to the host.
  ProfilePlanner planner(with_host(synthetic(16e9, 300e12, 4096, 1024), 1e9, 1), model(4096, 1024));
  const auto d = planner.decide({4096});
  EXPECT_LT(d.plan.host_ratio, 0.1);
  if (!d.plan.m.empty()) {
    EXPECT_GT(d.plan.m[0], 0.9 * 4096);
  }
  EXPECT_GE(d.predicted.total_s, 0.9 * d.transfer.total_s);
  // And no host measured at all: two-way, saying so.
  ProfilePlanner unmeasured(synthetic(16e9, 300e12, 4096, 1024), model(4096, 1024));
  const auto u = unmeasured.decide({4096});
  EXPECT_TRUE(u.plan.m.empty());
  EXPECT_NE(u.plan.reason.find("not measured"), std::string::npos) << u.plan.reason;
}

// A worker's share of its node's host threads (the kvstore gives it out) caps what the profile
// measured: with one thread of the four, less of the context goes to the host, and the plan cache
// keeps the two apart.
TEST(ProfilePlanner, PlansWithTheWorkersShareOfTheNodesHostThreads) {
  ProfilePlanner planner(with_host(synthetic(16e9, 300e12, 4096, 1024), 4e9, 4), model(4096, 1024));
  PlanRequest r;
  r.policy = Policy::kvpr;
  r.s = {4096, 4096};
  r.host_threads = 4;
  const auto whole = planner.plan(r);
  r.host_threads = 1;
  const auto share = planner.plan(r);
  EXPECT_GT(whole.host_ratio, 0.0) << whole.reason;
  EXPECT_LT(share.host_ratio, whole.host_ratio) << share.reason;
  EXPECT_NE(share.reason.find("1 host threads"), std::string::npos) << share.reason;
  EXPECT_EQ(planner.plans_computed(), 2);
  r.host_threads = 0;  // unknown: the profile's four
  EXPECT_EQ(planner.plan(r).host_ratio, whole.host_ratio);
}

TEST(ProfilePlanner, MultiHeadAtLinkBoundRatiosStillRecomputes) {
  ProfilePlanner planner(with_host(synthetic(16e9, 300e12), 16e9, 4), model());
  const auto d = planner.decide({4096});
  EXPECT_NE(d.plan.policy, Policy::transfer);
  EXPECT_GT(d.plan.ratio, 0.3);
  EXPECT_LE(d.predicted.total_s, d.two_way.total_s);
}

TEST(ProfilePlanner, RejectsAProfileOfAnotherShape) {
  EXPECT_THROW(ProfilePlanner(synthetic(1e9, 1e12, 64, 64), model()), std::exception);
}

}  // namespace
}  // namespace kvpr::planner
