// FallbackPlanner: plans locally while the primary fails `disconnected`, counts each such plan and
// reports it to its hook, asks the primary again once per retry interval, ends the outage with
// the first plan the primary gives, and lets every other error of the primary through.
#include "kvpr/planner/fallback_planner.h"

#include <gtest/gtest.h>

#include <thread>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

using namespace std::chrono_literals;

// Fails `disconnected` while `down`, else plans a fixed split of 1; counts its calls.
class Replicas final : public Planner {
 public:
  Plan plan(const PlanRequest& request) override {
    ++calls;
    if (refuse) fail("planner: the request is invalid");
    if (down) raise(ErrorKind::disconnected, "planner: no replica gave a plan within 10 ms");
    Plan plan = CostModelPlanner().plan(request);
    plan.reason = "from a replica";
    return plan;
  }
  int calls = 0;
  bool down = false;
  bool refuse = false;
};

PlanRequest request(std::vector<std::int64_t> s) {
  PlanRequest r;
  r.shape = {4096, 4096, 2};
  r.n_layers = 4;
  r.s = std::move(s);
  r.rates = {16e9, 200e12};
  return r;
}

TEST(FallbackPlanner, PlansLocallyWhileNoReplicaAnswersAndCountsEachFallback) {
  Replicas replicas;
  CostModelPlanner local;
  FallbackPlanner planner(replicas, local, 0ms);  // ask the replicas every time
  int hooked = 0;
  planner.on_fallback([&] { ++hooked; });

  EXPECT_EQ(planner.plan(request({100})).reason, "from a replica");
  EXPECT_EQ(planner.fallbacks(), 0);

  replicas.down = true;
  const Plan expected = local.plan(request({300, 40}));
  const Plan got = planner.plan(request({300, 40}));
  EXPECT_EQ(got.policy, expected.policy);
  EXPECT_EQ(got.l, expected.l);
  EXPECT_EQ(got.chunk, expected.chunk);
  EXPECT_NE(got.reason.find("local fallback"), std::string::npos) << got.reason;
  (void)planner.plan(request({500}));
  EXPECT_EQ(planner.fallbacks(), 2);
  EXPECT_EQ(hooked, 2);
  EXPECT_EQ(planner.outages(), 1);  // two fallbacks, one outage
  EXPECT_TRUE(planner.in_outage());

  replicas.down = false;
  EXPECT_EQ(planner.plan(request({700})).reason, "from a replica");
  EXPECT_FALSE(planner.in_outage());
  EXPECT_EQ(planner.fallbacks(), 2);

  replicas.down = true;
  (void)planner.plan(request({900}));
  EXPECT_EQ(planner.outages(), 2);
}

TEST(FallbackPlanner, AsksTheReplicasAgainOnlyOncePerRetryInterval) {
  Replicas replicas;
  CostModelPlanner local;
  FallbackPlanner planner(replicas, local, 200ms);
  replicas.down = true;
  for (int i = 0; i < 5; ++i) (void)planner.plan(request({100 + i}));
  EXPECT_EQ(replicas.calls, 1);  // a dead replica's timeout is paid once per interval
  EXPECT_EQ(planner.fallbacks(), 5);

  replicas.down = false;
  std::this_thread::sleep_for(250ms);
  EXPECT_EQ(planner.plan(request({200})).reason, "from a replica");
  EXPECT_EQ(replicas.calls, 2);
  EXPECT_FALSE(planner.in_outage());
}

TEST(FallbackPlanner, AReplicasRefusalIsNotAFallback) {
  Replicas replicas;
  CostModelPlanner local;
  FallbackPlanner planner(replicas, local);
  replicas.refuse = true;
  try {
    (void)planner.plan(request({100}));
    FAIL() << "a refusal must pass through";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::failed);
  }
  EXPECT_EQ(planner.fallbacks(), 0);
  EXPECT_FALSE(planner.in_outage());
}

TEST(FallbackPlanner, ANegativeRetryIsRefused) {
  Replicas replicas;
  CostModelPlanner local;
  EXPECT_THROW(FallbackPlanner(replicas, local, -1ms), Error);
}

}  // namespace
}  // namespace kvpr::planner
