// Bad wire input to the planner service: garbage bytes, a message of several frames, a truncated
// message, an oversized one, an unknown request type, a past deadline and out-of-range fields.
// Each gets an error reply (with the request's id when it could be read), counts in
// kvpr_rejected_messages_total{reason}, and the service goes on answering valid requests.
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "kvpr/planner/planner_service.h"
#include "kvpr/planner/remote_planner.h"
#include "planner_test_support.h"

namespace kvpr::planner {
namespace {

using namespace std::chrono_literals;
using testing::metric_value;

void fill_plan(wire::PlanRequest::Builder plan, std::size_t n_sequences = 2) {
  auto model = plan.initModel();
  model.setNLayers(4);
  model.setH(4096);
  model.setHKv(4096);
  model.setFfn(16384);
  model.setElementBytes(2);
  model.setBlockTokens(16);
  auto s = plan.initS(static_cast<unsigned>(n_sequences));
  for (unsigned i = 0; i < s.size(); ++i) s.set(i, 1000 + i);
  plan.setPolicy(wire::Policy::KVPR);
  plan.setSplit(-1);
  plan.setBytesPerS(16e9);
  plan.setFlopsPerS(300e12);
}

void fill_profile(wire::Profile::Builder profile) {
  profile.setFingerprint("wire-test");
  profile.setH(4096);
  profile.setHKv(4096);
  for (auto curve : {profile.initH2dBytesPerS(2), profile.initD2hBytesPerS(2),
                     profile.initRecomputeFlopsPerS(2)}) {
    curve[0].setX(1);
    curve[0].setY(1e9);
    curve[1].setX(1e6);
    curve[1].setY(1e10);
  }
}

struct ErrorReply {
  std::uint64_t id = 0;
  ErrorKind kind = ErrorKind::failed;
  std::string reason;
};

class PlannerWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    service_.start();
    peer_ = std::make_unique<testing::RawPeer>(context_, service_.endpoint());
  }

  ErrorReply expect_error_reply() {
    auto frame = peer_->receive();
    if (!frame) {
      ADD_FAILURE() << "no reply";
      return {};
    }
    const auto reply = frame->root<wire::PlannerReply>();
    if (!reply.isError()) {
      ADD_FAILURE() << "not an error reply";
      return {};
    }
    return {reply.getId(), net::from_wire(reply.getError().getKind()),
            reply.getError().getReason().cStr()};
  }
  ErrorReply send_expecting_error(const std::vector<std::string>& frames) {
    peer_->send(frames);
    return expect_error_reply();
  }
  ErrorReply send_expecting_error(capnp::MessageBuilder& message) {
    peer_->send(message);
    return expect_error_reply();
  }

  double rejected(const std::string& reason) {
    return std::max(0.0, metric_value(service_.registry(), "kvpr_rejected_messages_total",
                                      {{"reason", reason}}));
  }

  // The stats reply's count of rejected messages, asked over the wire.
  std::uint64_t rejected_over_the_wire() {
    net::RpcClient client(context_, service_.endpoint(), "planner");
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::PlannerRequest>();
    const auto id = net::next_request_id();
    request.setId(id);
    request.setStats();
    auto frame = client.call<wire::PlannerReply>(message, id, 2000ms);
    return frame->root<wire::PlannerReply>().getStats().getRejectedMessages();
  }

  void expect_still_serving() {
    RemotePlanner remote(context_, {service_.endpoint()}, testing::model_shape());
    EXPECT_EQ(remote.plan(testing::plan_request({1000})).l.size(), 1u);
  }

  // Sends `bytes`, expects an error naming `what`, one more rejection for `reason`, and service.
  void expect_rejected(const std::string& bytes, const std::string& what,
                       const std::string& reason) {
    const double before = rejected(reason);
    const auto before_total = rejected_over_the_wire();
    const auto reply = send_expecting_error({bytes});
    EXPECT_NE(reply.reason.find(what), std::string::npos) << reply.reason;
    EXPECT_EQ(rejected(reason), before + 1);
    EXPECT_EQ(rejected_over_the_wire(), before_total + 1);
    expect_still_serving();
  }

  zmq::context_t context_;
  PlannerService service_{context_, PlannerServiceOptions{}};
  std::unique_ptr<testing::RawPeer> peer_;
};

TEST_F(PlannerWireTest, GarbageBytesAreRejected) {
  expect_rejected("not a capnp message", "malformed message", "malformed");
  expect_rejected(std::string(16, '\xff'), "malformed message", "malformed");
}

TEST_F(PlannerWireTest, AMessageOfSeveralFramesIsRejected) {
  const auto reply = send_expecting_error({"one", "two", "three"});
  EXPECT_NE(reply.reason.find("3 frames"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("malformed"), 1);
  expect_still_serving();
}

TEST_F(PlannerWireTest, ATruncatedMessageIsRejected) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::PlannerRequest>();
  request.setId(41);
  fill_plan(request.initPlan(), 64);
  std::string bytes = testing::bytes_of(message);
  bytes.resize(bytes.size() / 2 / 8 * 8);
  expect_rejected(bytes, "malformed message", "malformed");
}

// Over the socket's limit: the sender is disconnected before the frame is buffered (no reply);
// under it but over the codec's limit cannot happen (the codec's is larger).
TEST_F(PlannerWireTest, AnOversizedFrameDisconnectsItsSenderBeforeItIsBuffered) {
  static_assert(net::RouterLimits{}.max_message_bytes < net::kMaxMessageBytes);
  zmq::socket_t raw = net::make_socket(context_, zmq::socket_type::dealer);
  raw.connect(service_.endpoint());
  raw.send(zmq::message_t(net::RouterLimits{}.max_message_bytes + 8), zmq::send_flags::none);
  zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, std::chrono::milliseconds(500));
  EXPECT_EQ(item.revents & ZMQ_POLLIN, 0) << "an oversized frame was answered, so it was read";
  EXPECT_EQ(rejected_over_the_wire(), 0u);
  expect_still_serving();
}

TEST_F(PlannerWireTest, AnUnknownRequestTypeIsRejectedWithItsId) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::PlannerRequest>();
  request.setId(77);
  request.setStats();
  // A union member this planner does not know (a newer client): discriminant 7.
  const auto offset =
      capnp::Schema::from<wire::PlannerRequest>().getProto().getStruct().getDiscriminantOffset();
  auto data = message.getRoot<capnp::AnyStruct>().getDataSection();
  data[offset * 2] = 7;
  data[offset * 2 + 1] = 0;
  const auto reply = send_expecting_error(message);
  EXPECT_EQ(reply.id, 77u);
  EXPECT_EQ(reply.kind, ErrorKind::unimplemented);
  EXPECT_NE(reply.reason.find("unknown type"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("unknown_type"), 1);
  expect_still_serving();
}

TEST_F(PlannerWireTest, ARequestPastItsDeadlineIsRejected) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::PlannerRequest>();
  request.setId(78);
  request.setDeadlineUnixMs(net::now_unix_ms() - 5000);
  fill_plan(request.initPlan());
  const auto reply = send_expecting_error(message);
  EXPECT_EQ(reply.id, 78u);
  EXPECT_EQ(reply.kind, ErrorKind::disconnected);
  EXPECT_NE(reply.reason.find("expired"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("expired"), 1);
  expect_still_serving();
}

TEST_F(PlannerWireTest, OutOfRangeFieldsAreRejectedNamingTheField) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  using Plan = wire::PlanRequest::Builder;
  using Profile = wire::Profile::Builder;
  struct Case {
    std::string what;  // in the error's reason
    std::function<void(Plan)> plan;
    std::function<void(Profile)> profile;
  };
  const std::vector<Case> cases = {
      {"model.h = 0", [](Plan p) { p.getModel().setH(0); }, {}},
      {"model.hKv = -8", [](Plan p) { p.getModel().setHKv(-8); }, {}},
      {"model.nLayers = 0", [](Plan p) { p.getModel().setNLayers(0); }, {}},
      {"model.elementBytes = 3", [](Plan p) { p.getModel().setElementBytes(3); }, {}},
      {"s[1] = -1", [](Plan p) { p.getS().set(1, -1); }, {}},
      {"split = -5", [](Plan p) { p.setSplit(-5); }, {}},
      {"bytesPerS = nan", [](Plan p) { p.setBytesPerS(kNaN); }, {}},
      {"flopsPerS = inf",
       [](Plan p) { p.setFlopsPerS(std::numeric_limits<double>::infinity()); },
       {}},
      {"policy = 9", [](Plan p) { p.setPolicy(static_cast<wire::Policy>(9)); }, {}},
      {"s has 5000 sequences", [](Plan p) { fill_plan(p, 5000); }, {}},
      {"s has 0 sequences", [](Plan p) { p.initS(0); }, {}},
      {"fingerprint is empty", {}, [](Profile p) { p.setFingerprint(""); }},
      {"h2dBytesPerS[1].y = nan", {}, [](Profile p) { p.getH2dBytesPerS()[1].setY(kNaN); }},
      {"d2hBytesPerS[1].x = 0.5 is not above",
       {},
       [](Profile p) { p.getD2hBytesPerS()[1].setX(0.5); }},
      {"recomputeFlopsPerS has 0 points", {}, [](Profile p) { p.initRecomputeFlopsPerS(0); }},
      {"attentionSPerToken = -1", {}, [](Profile p) { p.setAttentionSPerToken(-1); }},
  };
  std::uint64_t id = 500;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::PlannerRequest>();
    request.setId(++id);
    if (c.plan) {
      auto plan = request.initPlan();
      fill_plan(plan);
      c.plan(plan);
    } else {
      auto profile = request.initReport();
      fill_profile(profile);
      c.profile(profile);
    }
    const double before = rejected("invalid");
    const auto reply = send_expecting_error(message);
    EXPECT_EQ(reply.id, id);
    EXPECT_EQ(reply.kind, ErrorKind::failed);
    EXPECT_NE(reply.reason.find(c.what), std::string::npos) << reply.reason;
    EXPECT_EQ(rejected("invalid"), before + 1);
  }
  EXPECT_EQ(rejected_over_the_wire(), cases.size());
  EXPECT_EQ(service_.stats().profiles, 0u);
  expect_still_serving();
}

}  // namespace
}  // namespace kvpr::planner
