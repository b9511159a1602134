// RpcClient streams against a real ROUTER over TCP: a peer that goes away ends the stream at once
// with ErrorKind::disconnected (not at the stream's deadline), after what it sent before going.
#include "kvpr/net/rpc.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>

#include "../slowdown.h"

namespace kvpr::net {
namespace {

using namespace std::chrono_literals;

void send_error(capnp::MallocMessageBuilder& message, const std::string& text) {
  set_error(message.initRoot<wire::Error>(), Error(ErrorKind::failed, text));
}

TEST(RpcClientStream, PeerThatClosesEndsTheStreamAfterWhatItSent) {
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
  // The reply is on its way before the socket closes.
  // Closed with a linger: the reply leaves before the connection closes, however slow the run.
  router->socket().set(zmq::sockopt::linger, 5000);
  std::this_thread::sleep_for(kvpr::test_timing::slow(100ms));
  router.reset();

  auto frame = client.receive(30s);
  ASSERT_NE(frame, nullptr);
  EXPECT_NE(std::string(frame->root<wire::Error>().getReason().cStr()).find("the one reply"),
            std::string::npos);
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
