// The planner service in-process on tcp://127.0.0.1:0, answering a RemotePlanner: plans equal the
// in-process planners' (cost model without a profile, the profile scheduler with one), a replica
// that restarts gets the profile again, stop() drains, and the metrics count what happened.
#include "kvpr/planner/planner_service.h"

#include <gtest/gtest.h>

#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/planner/caching_planner.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/planner/remote_planner.h"
#include "planner_test_support.h"

namespace kvpr::planner {
namespace {

using namespace std::chrono_literals;
using testing::expect_same_plan;
using testing::metric_value;
using testing::model_shape;
using testing::plan_request;
using testing::synthetic_profile;

class PlannerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { service_.start(); }

  zmq::context_t context_;
  PlannerService service_{context_, PlannerServiceOptions{}};
};

TEST_F(PlannerServiceTest, ListensOnAFreePortAndSaysWhich) {
  EXPECT_TRUE(service_.endpoint().starts_with("tcp://127.0.0.1:")) << service_.endpoint();
  EXPECT_FALSE(service_.endpoint().ends_with(":0"));
  EXPECT_EQ(service_.metrics_port(), -1);
}

TEST_F(PlannerServiceTest, WithoutAProfilePlansEqualTheCostModels) {
  RemotePlanner remote(context_, {service_.endpoint()}, model_shape());
  CostModelPlanner local;
  std::vector<PlanRequest> requests = {
      plan_request({1000, 2000}), plan_request({4096}, Policy::transfer),
      plan_request({300, 40}, Policy::recompute), plan_request({17}, Policy::resident)};
  requests.push_back(plan_request({100, 5000}));
  requests.back().split = 700;
  for (const auto& request : requests) {
    SCOPED_TRACE(to_string(request.policy));
    expect_same_plan(remote.plan(request), local.plan(request));
  }
  EXPECT_EQ(service_.stats().plan_requests, requests.size());
  EXPECT_EQ(service_.stats().rejected_messages, 0u);
}

TEST_F(PlannerServiceTest, WithAReportedProfilePlansEqualTheProfileSchedulers) {
  RemotePlanner remote(context_, {service_.endpoint()}, model_shape());
  const auto profile = synthetic_profile();
  EXPECT_EQ(remote.report(profile), 1u);
  ProfilePlanner local(profile, model_shape());
  for (const auto& s : std::vector<std::vector<std::int64_t>>{{1000}, {1010}, {512, 4000, 77}}) {
    expect_same_plan(remote.plan(plan_request(s)), local.plan(plan_request(s)));
  }
  auto fixed = plan_request({900}, Policy::transfer);
  expect_same_plan(remote.plan(fixed), local.plan(fixed));
  EXPECT_EQ(service_.stats().profiles, 1u);
  EXPECT_EQ(service_.stats().profile_reports, 1u);
  EXPECT_EQ(metric_value(service_.registry(), "kvpr_planner_profiles"), 1);
}

TEST_F(PlannerServiceTest, AProfileOfAnotherShapeIsRefusedWithTheReason) {
  RemotePlanner remote(context_, {service_.endpoint()}, model_shape());
  remote.report(synthetic_profile("small", 64, 64));
  try {
    remote.plan(plan_request({100}));
    FAIL() << "planned with a profile of another shape";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::failed);
    EXPECT_NE(std::string(e.what()).find("re-profile"), std::string::npos) << e.what();
  }
  // Nothing is lost: the same client still plans for a shape the profile fits.
  auto small = plan_request({100});
  small.shape = {64, 64, 2};
  EXPECT_EQ(remote.plan(small).l.size(), 1u);
}

TEST_F(PlannerServiceTest, AnInvalidProfileIsRefusedWithTheFieldNamed) {
  RemotePlanner remote(context_, {service_.endpoint()}, model_shape());
  auto profile = synthetic_profile();
  profile.recompute_flops_per_s.x = {16, 16, 4096};
  try {
    remote.report(profile);
    FAIL() << "an invalid profile was stored";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::failed);
    EXPECT_NE(std::string(e.what()).find("recomputeFlopsPerS[1].x"), std::string::npos) << e.what();
  }
  EXPECT_EQ(service_.stats().profiles, 0u);
}

TEST(PlannerService, AReplicaThatRestartedGetsTheProfileAgain) {
  zmq::context_t context;
  auto first = std::make_unique<PlannerService>(context, PlannerServiceOptions{});
  first->start();
  const std::string endpoint = first->endpoint();
  RemotePlanner remote(context, {endpoint}, model_shape(), "", 2000ms);
  const auto profile = synthetic_profile();
  ASSERT_EQ(remote.report(profile), 1u);
  ProfilePlanner local(profile, model_shape());
  expect_same_plan(remote.plan(plan_request({1000})), local.plan(plan_request({1000})));

  first.reset();  // the replica goes away and another comes up on its endpoint, empty
  PlannerServiceOptions options;
  options.endpoint = endpoint;
  PlannerService second(context, options);
  // ZeroMQ closes the old listener in its I/O thread, a moment after the first service stopped.
  for (int attempt = 0;; ++attempt) {
    try {
      second.start();
      break;
    } catch (const Error&) {
      if (attempt == 100) throw;
      std::this_thread::sleep_for(20ms);
    }
  }
  std::this_thread::sleep_for(200ms);  // the client reconnects
  expect_same_plan(remote.plan(plan_request({2000})), local.plan(plan_request({2000})));
  EXPECT_EQ(remote.re_reports(), 1);
  EXPECT_EQ(second.stats().profiles, 1u);
}

TEST_F(PlannerServiceTest, MetricsCountPlansReportsAndTheLastSplitRatio) {
  RemotePlanner remote(context_, {service_.endpoint()}, model_shape());
  remote.report(synthetic_profile());
  remote.plan(plan_request({1000}));
  const auto plan = remote.plan(plan_request({300, 40}, Policy::recompute));
  auto& registry = service_.registry();
  EXPECT_EQ(metric_value(registry, "kvpr_plan_requests_total"), 2);
  EXPECT_EQ(metric_value(registry, "kvpr_plan_latency_seconds"), 2);
  EXPECT_EQ(metric_value(registry, "kvpr_profile_reports_total"), 1);
  EXPECT_EQ(metric_value(registry, "kvpr_planner_profiles"), 1);
  EXPECT_EQ(metric_value(registry, "kvpr_planner_split_ratio"), 1.0);  // recompute: l = s
  EXPECT_EQ(plan.l, (std::vector<std::int64_t>{300, 40}));
}

TEST_F(PlannerServiceTest, StopAnswersWhatAlreadyArrived) {
  testing::RawPeer peer(context_, service_.endpoint());
  constexpr int kRequests = 20;
  for (int i = 0; i < kRequests; ++i) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::PlannerRequest>();
    request.setId(static_cast<std::uint64_t>(100 + i));
    request.setStats();
    peer.send(message);
  }
  std::this_thread::sleep_for(100ms);
  service_.stop();
  for (int i = 0; i < kRequests; ++i) {
    auto reply = peer.receive();
    ASSERT_NE(reply, nullptr) << "reply " << i << " never came";
    EXPECT_TRUE(reply->root<wire::PlannerReply>().isStats());
  }
}

TEST(PlannerService, HandlesBytesWithoutASocket) {
  zmq::context_t context;
  PlannerService service(context, PlannerServiceOptions{});  // not started: what a fuzzer sees
  const char garbage[] = "\x01\x00\x00\x00\xff\xff\xff\x7f garbage";  // 2 segments, huge
  auto reply = service.handle(garbage, sizeof(garbage) - 1);
  net::Frame frame(reply);
  EXPECT_TRUE(frame.root<wire::PlannerReply>().isError());
  EXPECT_EQ(service.stats().rejected_messages, 1u);
}

TEST(CachingPlanner, OverARemotePlannerAsksOncePerBucket) {
  zmq::context_t context;
  PlannerService service(context, PlannerServiceOptions{});
  service.start();
  RemotePlanner remote(context, {service.endpoint()}, model_shape());
  CachingPlanner cached(remote, 64);
  for (std::int64_t s = 1000; s < 1024; s += 4) cached.plan(plan_request({s, 2 * s}));
  EXPECT_EQ(service.stats().plan_requests, 1u);
  EXPECT_EQ(cached.misses(), 1);
  EXPECT_EQ(cached.hits(), 5);
}

// What kvpr-worker does when its profile drifted (profile_drift.h): the refitted profile, under the
// same fingerprint, is reported again and the worker's cached plans dropped; the replica's next
// plans come from the refit.
TEST(CachingPlanner, ARefittedProfileReportedAgainIsPlannedFrom) {
  zmq::context_t context;
  PlannerService service(context, PlannerServiceOptions{});
  service.start();
  HardwareProfile stale = synthetic_profile();
  for (auto& y : stale.h2d_bytes_per_s.y) y *= 4;  // measured while the link was idle and warm
  for (auto& y : stale.d2h_bytes_per_s.y) y *= 4;
  const HardwareProfile refit = synthetic_profile();
  RemotePlanner remote(context, {service.endpoint()}, model_shape());
  ASSERT_EQ(remote.report(stale), 1u);
  CachingPlanner cached(remote, 64);
  const auto request = plan_request({1000, 3000});
  const Plan before = cached.plan(request);
  ProfilePlanner stale_local(stale, model_shape());
  EXPECT_EQ(before.l, stale_local.plan(request).l);

  ASSERT_EQ(remote.report(refit), 1u);
  cached.clear();
  const Plan after = cached.plan(request);
  ProfilePlanner refit_local(refit, model_shape());
  EXPECT_EQ(after.l, refit_local.plan(request).l);
  EXPECT_NE(after.l, before.l) << "a link 4x slower should change the split";
  EXPECT_EQ(service.stats().profile_reports, 2u);
  EXPECT_EQ(service.stats().plan_requests, 2u);
}

}  // namespace
}  // namespace kvpr::planner
