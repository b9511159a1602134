// The drift monitor and the refit on synthetic profiles: a profile whose link is wrong by 2× is
// refitted after one window to predict the measured steps within the margin, and the plan it makes
// changes to the one the true profile makes; drift within the margin refits nothing; each phase is
// refitted on its own; ProfilePlanner::update_profile drops the cached plans, also while other
// threads plan.
#include "kvpr/planner/drift_monitor.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/planner/profile_planner.h"

namespace kvpr::planner {
namespace {

constexpr double kMargin = 0.15;
constexpr std::int64_t kWindow = 16;

Curve flat(double y) {
  return {{1, 1e12}, {y, y}};
}

// A link-bound machine: 8 GB/s, 40 TFLOP/s of recompute.
HardwareProfile truth() {
  HardwareProfile p;
  p.fingerprint = "drift-test";
  p.backend = "synthetic";
  p.h = 4096;
  p.h_kv = 4096;
  p.n_heads = 32;
  p.head_dim = 128;
  p.ffn = 4 * 4096;
  p.h2d_bytes_per_s = {{4096, 1 << 20, 1 << 26}, {2e9, 6e9, 8e9}};
  p.d2h_bytes_per_s = flat(8e9);
  p.recompute_flops_per_s = {{16, 256, 4096}, {10e12, 30e12, 40e12}};
  p.attention_s_per_token = 1e-8;
  p.attention_s_per_query = 1e-6;
  p.other_s_per_layer = 1e-4;
  p.other_s_per_row = 1e-5;
  p.head_s = 1e-3;
  p.head_s_per_row = 1e-5;
  return p;
}

// The same machine as a profile measured while something else used the link would not see it: a
// link twice as fast as it is.
HardwareProfile fast_link() {
  HardwareProfile p = truth();
  for (auto& y : p.h2d_bytes_per_s.y) y *= 2;
  for (auto& y : p.d2h_bytes_per_s.y) y *= 2;
  return p;
}

StepShape model() {
  StepShape m;
  m.n_layers = 4;
  m.h = 4096;
  m.h_kv = 4096;
  m.ffn = 4 * 4096;
  m.p = 2;
  m.block_tokens = 16;
  return m;
}

PlanRequest request(std::vector<std::int64_t> s) {
  PlanRequest r;
  r.shape = {4096, 4096, 2};
  r.n_layers = 4;
  r.s = std::move(s);
  return r;
}

// Step `i` of a batch of four growing contexts, run as `planner` plans it, "measured" on the true
// machine (the step model's replay under the true profile).
ObservedStep run_step(ProfilePlanner& planner, std::int64_t i) {
  const std::vector<std::int64_t> s = {1000 + i, 1400 + i, 1800 + i, 2000 + i};
  const Plan plan = planner.plan(request(s));
  ObservedStep step{model(), {}};
  step.shape.s = s;
  step.shape.l = plan.l;
  step.shape.chunk = plan.chunk;
  step.measured = predict_step(truth(), step.shape);
  return step;
}

double error(const HardwareProfile& profile, const ObservedStep& step) {
  return predict_step(profile, step.shape).total_s / step.measured.total_s - 1;
}

TEST(DriftMonitor, LinkWrongByTwiceIsRefittedAfterOneWindowAndThePlanChanges) {
  ProfilePlanner planner(fast_link(), model());
  DriftMonitor monitor(fast_link(), {kMargin, kWindow});
  const Plan stale_plan = planner.plan(request({1000, 1400, 1800, 2000}));
  std::optional<Refit> refit;
  std::int64_t i = 0;
  for (; i < kWindow; ++i) {
    const auto step = run_step(planner, i);
    EXPECT_LT(error(monitor.profile(), step), -kMargin) << "the stale profile predicts too fast";
    refit = monitor.observe(step);
    if (i + 1 < kWindow) {
      ASSERT_FALSE(refit) << "refitted before the window closed, at step " << i;
      EXPECT_EQ(monitor.ratio(), 1.0);
    }
  }
  ASSERT_TRUE(refit);
  EXPECT_EQ(monitor.refits(), 1);
  EXPECT_GT(monitor.ratio(), 1 + kMargin);
  EXPECT_GT(refit->ratio_before, 1 + kMargin);
  EXPECT_NEAR(refit->ratio_after, 1.0, 1e-6);
  EXPECT_NEAR(refit->transfer_scale, 2.0, 1e-6);  // the copies took twice the predicted time
  EXPECT_NEAR(refit->recompute_scale, 1.0, 1e-6);
  EXPECT_NEAR(refit->attention_scale, 1.0, 1e-6);
  EXPECT_NEAR(refit->other_scale, 1.0, 1e-6);
  EXPECT_NEAR(refit->profile.h2d_bytes_per_s.y.back(), 8e9, 1e-3 * 8e9);

  planner.update_profile(refit->profile);
  for (std::int64_t k = 0; k < kWindow; ++k, ++i) {
    const auto step = run_step(planner, i);
    EXPECT_LT(std::abs(error(monitor.profile(), step)), kMargin);
    EXPECT_NEAR(error(monitor.profile(), step), 0.0, 1e-6);
    EXPECT_FALSE(monitor.observe(step)) << "refitted again at step " << i;
  }
  EXPECT_NEAR(monitor.ratio(), 1.0, 1e-6);
  EXPECT_EQ(monitor.refits(), 1);

  // The slower link makes recomputing worth more: the refitted plan recomputes more, and is the
  // plan the true profile makes.
  const Plan refitted_plan = planner.plan(request({1000, 1400, 1800, 2000}));
  ProfilePlanner true_planner(truth(), model());
  const Plan true_plan = true_planner.plan(request({1000, 1400, 1800, 2000}));
  EXPECT_GT(refitted_plan.ratio, stale_plan.ratio);
  EXPECT_EQ(refitted_plan.l, true_plan.l);
  EXPECT_EQ(refitted_plan.chunk, true_plan.chunk);
}

TEST(DriftMonitor, DriftWithinTheMarginRefitsNothing) {
  ProfilePlanner planner(truth(), model());
  DriftMonitor monitor(truth(), {kMargin, 4});
  for (std::int64_t i = 0; i < 12; ++i) {
    auto step = run_step(planner, i);
    step.measured.total_s *= 1.1;  // 10% slower than predicted, every step
    EXPECT_FALSE(monitor.observe(step));
  }
  EXPECT_NEAR(monitor.ratio(), 1.1, 1e-6);
  EXPECT_EQ(monitor.refits(), 0);
}

TEST(DriftMonitor, WindowZeroIsOff) {
  ProfilePlanner planner(fast_link(), model());
  DriftMonitor monitor(fast_link(), {kMargin, 0});
  for (std::int64_t i = 0; i < 40; ++i) EXPECT_FALSE(monitor.observe(run_step(planner, i)));
  EXPECT_EQ(monitor.ratio(), 1.0);
  EXPECT_THROW(DriftMonitor(truth(), {0.0, 16}), Error);
  EXPECT_THROW(DriftMonitor(truth(), {0.1, -1}), Error);
}

TEST(RefitProfile, EachPhaseIsScaledOnItsOwnAndTheRestGoesToTheHead) {
  ProfilePlanner planner(truth(), model());
  std::vector<ObservedStep> steps;
  for (std::int64_t i = 0; i < 8; ++i) {
    auto step = run_step(planner, i);
    step.measured.attention_s *= 3;
    step.measured.recompute_s *= 0.5;
    step.measured.other_s *= 2;
    step.measured.total_s += 4e-3;  // unexplained time: store calls, planning
    steps.push_back(step);
  }
  const Refit r = refit_profile(truth(), steps);
  EXPECT_NEAR(r.transfer_scale, 1.0, 1e-9);
  EXPECT_NEAR(r.recompute_scale, 0.5, 1e-9);
  EXPECT_NEAR(r.attention_scale, 3.0, 1e-9);
  EXPECT_NEAR(r.other_scale, 2.0, 1e-9);
  EXPECT_NEAR(r.profile.recompute_flops_per_s.y.back(), 80e12, 1e3);
  EXPECT_NEAR(r.profile.attention_s_per_token, 3e-8, 1e-15);
  EXPECT_NEAR(r.profile.other_s_per_layer, 2e-4, 1e-12);
  EXPECT_NEAR(r.residual_s, 4e-3, 1e-3);  // less what the rescaled overlap already explains
  EXPECT_NEAR(r.ratio_after, 1.0, 1e-3);  // the median residual: exact up to overlap
  EXPECT_EQ(r.ratio_after, drift_ratio(r.profile, steps));
  EXPECT_THROW(refit_profile(truth(), {}), Error);
}

TEST(ProfilePlannerUpdate, DropsCachedPlansAndPlansFromTheNewProfile) {
  ProfilePlanner planner(fast_link(), model());
  const auto req = request({1000, 1400, 1800, 2000});
  const Plan before = planner.plan(req);
  planner.plan(req);
  EXPECT_EQ(planner.plans_computed(), 1);
  planner.update_profile(truth());
  const Plan after = planner.plan(req);
  EXPECT_EQ(planner.plans_computed(), 2) << "the cached plan outlived the profile it came from";
  EXPECT_NE(after.l, before.l);
  EXPECT_EQ(planner.profile().h2d_bytes_per_s.y.back(), 8e9);
  EXPECT_GT(after.predicted_step_s, before.predicted_step_s);

  HardwareProfile other = truth();
  other.h = 2048;
  EXPECT_THROW(planner.update_profile(other), Error);
  EXPECT_EQ(planner.profile().h, 4096) << "a refused profile replaced the good one";
}

TEST(ProfilePlannerUpdate, PlansStayConsistentWhileAnotherThreadSwapsProfiles) {
  ProfilePlanner planner(fast_link(), model());
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::int64_t i = 0;
      while (!stop) {
        const auto plan = planner.plan(request({1000 + 64 * (i++ % 8), 1400 + t}));
        ASSERT_EQ(plan.l.size(), 2u);
      }
    });
  }
  for (int k = 0; k < 20; ++k) planner.update_profile(k % 2 == 0 ? truth() : fast_link());
  stop = true;
  for (auto& t : threads) t.join();
  // The last profile swapped in was fast_link(): plans now are what a fresh planner makes from it.
  ProfilePlanner fresh(fast_link(), model());
  const auto req = request({1000, 1401});
  EXPECT_EQ(planner.plan(req).l, fresh.plan(req).l);
}

}  // namespace
}  // namespace kvpr::planner
