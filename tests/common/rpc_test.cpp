// RpcClient streams against a real ROUTER over TCP: a peer that goes away ends the stream at once
// with ErrorKind::disconnected (not at the stream's deadline); a quiet peer reaches the deadline.
#include "kvpr/net/rpc.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>

namespace kvpr::net {
namespace {

using namespace std::chrono_literals;

void send_error(capnp::MallocMessageBuilder& message, const std::string& text) {
  set_error(message.initRoot<wire::Error>(), Error(ErrorKind::failed, text));
}

// The stream reads what its peer sent, then the peer goes away: the next read ends at once with
// `disconnected`. (What arrives together with the close can be lost: a DEALER with
// ZMQ_IMMEDIATE drops its pipe at the disconnect; the reply is therefore read before the close.)
TEST(RpcClientStream, PeerThatClosesEndsTheStreamAtOnce) {
  zmq::context_t context;
  auto router = std::make_unique<Router>(context, "tcp://127.0.0.1:0");
  RpcClient client(context, router->endpoint(), "test service");
  capnp::MallocMessageBuilder request;
  send_error(request, "hello");
  client.send(request, 5000ms);
  auto got = router->receive(5000ms);
  ASSERT_TRUE(got.has_value());
  capnp::MallocMessageBuilder reply;
  send_error(reply, "the one reply");
  router->send(got->peer, reply);
  auto frame = client.receive(30s);
  ASSERT_NE(frame, nullptr);
  EXPECT_NE(std::string(frame->root<wire::Error>().getReason().cStr()).find("the one reply"),
            std::string::npos);
  router.reset();

  // A 30 s deadline: returning null here would mean the close went unnoticed.
  try {
    frame = client.receive(30s);
    FAIL() << "the stream went on after its peer closed (frame: " << (frame != nullptr) << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
    EXPECT_NE(std::string(e.what()).find("test service"), std::string::npos) << e.what();
  }
}

TEST(RpcClientStream, QuietPeerReachesTheDeadlineWithoutError) {
  zmq::context_t context;
  Router router(context, "tcp://127.0.0.1:0");
  RpcClient client(context, router.endpoint(), "test service");
  capnp::MallocMessageBuilder request;
  send_error(request, "hello");
  client.send(request, 5000ms);
  EXPECT_EQ(client.receive(200ms), nullptr);
  ASSERT_TRUE(router.receive(5000ms).has_value());
}

}  // namespace
}  // namespace kvpr::net
