// A worker whose planner replicas are gone (a RemotePlanner pointed at an endpoint where nothing
// listens) still serves a new prompt length: plans come from its own cost model through
// FallbackPlanner, the tokens and logits equal those of a worker whose planner answers, and
// kvpr_planner_fallbacks_total on its /metrics registry counts the fallbacks.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <chrono>
#include <zmq.hpp>

#include "kvpr/planner/fallback_planner.h"
#include "kvpr/planner/remote_planner.h"
#include "kvpr/worker/profiler.h"
#include "kvpr/worker/worker_client.h"
#include "kvpr/worker/worker_service.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

using std::chrono::milliseconds;

const std::string kModel = std::string(KVPR_TEST_DATA) + "/golden/models/opt-2l-h64";
// Nothing listens on port 1 of loopback: every plan request times out.
const std::string kDeadPlanner = "tcp://127.0.0.1:1";

double counter(prometheus::Registry& registry, const std::string& name) {
  for (const auto& family : registry.Collect()) {
    if (family.name == name && family.metric.size() == 1) return family.metric[0].counter.value;
  }
  return -1;
}

RemoteGenerate request(std::vector<std::int32_t> prompt, std::int64_t n) {
  RemoteGenerate r;
  r.request.prompts = {std::move(prompt)};
  r.request.max_new_tokens = n;
  r.request.keep_logits = true;
  r.policy = planner::Policy::kvpr;
  r.split = std::nullopt;  // the planner chooses: every step asks it
  r.sampling.ignore_eos = true;
  return r;
}

// A worker service on `planner` over the stack's model and store.
struct Served {
  Served(planner::Planner& planner, WorkerServiceOptions options)
      : stack(kModel, planner::Policy::kvpr, std::nullopt),
        service(context, *stack.model, *stack.backend, *stack.store, planner, std::move(options)) {
    service.start();
  }
  testing::Stack stack;
  zmq::context_t context;
  WorkerService service;
};

TEST(WorkerPlannerFallback, NoReplicaAnsweringStillServesANewPromptLengthWithTheSameTokens) {
  const auto work = request({2, 31, 45, 60, 7, 11, 13}, 5);

  // A healthy worker: its planner (the same cost model the fallback uses) answers.
  planner::CostModelPlanner healthy_planner(4);
  Served healthy(healthy_planner, {});
  WorkerClient healthy_client(healthy.context, healthy.service.endpoint());
  const auto expected = healthy_client.generate(work);

  zmq::context_t planner_context;
  planner::RemotePlanner remote(planner_context, {kDeadPlanner},
                                step_shape(healthy.stack.checkpoint.config(), 16), {},
                                milliseconds(150));
  planner::CostModelPlanner local(4);
  planner::FallbackPlanner fallback(remote, local, milliseconds(60'000));
  WorkerServiceOptions options;
  options.fallback = &fallback;
  Served orphan(fallback, options);
  EXPECT_EQ(counter(orphan.service.registry(), "kvpr_planner_fallbacks_total"), 0);

  WorkerClient client(orphan.context, orphan.service.endpoint());
  const auto start = std::chrono::steady_clock::now();
  const auto got = client.generate(work);
  const auto took = std::chrono::steady_clock::now() - start;

  ASSERT_EQ(got.sequences.size(), 1u);
  ASSERT_EQ(expected.sequences.size(), 1u);
  EXPECT_EQ(got.sequences[0].tokens, expected.sequences[0].tokens);
  EXPECT_EQ(got.sequences[0].logits, expected.sequences[0].logits);  // same plans: bit for bit
  EXPECT_EQ(got.last_plan.l, expected.last_plan.l);
  // One outage: the dead replica's timeout is paid once, every step after plans at once.
  EXPECT_EQ(fallback.outages(), 1);
  EXPECT_GE(fallback.fallbacks(), 4);  // one per decode step (nothing caches here)
  EXPECT_EQ(counter(orphan.service.registry(), "kvpr_planner_fallbacks_total"),
            static_cast<double>(fallback.fallbacks()));
  EXPECT_LT(took, std::chrono::seconds(5));
}

}  // namespace
}  // namespace kvpr::worker
