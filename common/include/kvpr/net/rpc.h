// ZeroMQ request/reply plumbing shared by every service and client.
//
// - `Router` is a service's listening socket (ROUTER). Each request is two frames, [peer identity,
//   one Cap'n Proto message]; anything else is drained and reported as malformed so the service can
//   answer it and keep serving. Owned and used by one thread.
// - `RpcClient` is a client's DEALER to one service, matching replies to requests by id and giving
//   up with ErrorKind::disconnected when no reply arrives before the deadline (a dead or
//   unreachable peer never hangs a caller). Replies to abandoned requests are discarded when they
//   arrive late. A stream (`send` then `receive`) fails at once when the connection it was sent
//   on closes (a killed peer's kernel closes it), not only at its deadline: a socket monitor
//   reports the disconnect. (What arrives in the same instant as the close can be lost with it:
//   the socket, ZMQ_IMMEDIATE, drops the connection's pipe.) Thread-safe: calls are serialised on
//   an internal mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "kvpr/net/wire.h"

namespace kvpr::net {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A socket with LINGER 0 (closing never blocks on unsent messages to a dead peer).
zmq::socket_t make_socket(zmq::context_t& context, zmq::socket_type type);

// Binds and returns the endpoint actually bound: "tcp://HOST:0" binds a free port.
std::string bind(zmq::socket_t& socket, const std::string& endpoint);

// A process-wide increasing id for requests.
std::uint64_t next_request_id();
// Milliseconds since the Unix epoch `timeout` from now (the deadline field of requests).
std::uint64_t deadline_unix_ms(milliseconds timeout);
std::uint64_t now_unix_ms();

// What one peer can make a Router hold. A frame over `max_message_bytes` disconnects its peer
// before it is buffered (ZMQ_MAXMSGSIZE); at most `receive_queue` whole messages wait per peer
// (ZMQ_RCVHWM: past it ZeroMQ stops reading that peer's TCP stream), so a peer's inbound bytes are
// bounded by their product plus the kernel's socket buffers. ZeroMQ 4.3 delivers a multipart
// message whole and has no limit on its parts: only an authenticated peer (with --keys, every
// peer) can send one, and the Router drops it as malformed. Outbound, at most `send_queue`
// messages wait per peer; past it send() says `full` instead of queueing more.
struct RouterLimits {
  std::size_t max_message_bytes = std::size_t{1} << 20;
  int receive_queue = 64;
  int send_queue = 256;
};

class Router {
 public:
  // On a context with a Security (security.h), a CURVE server admitting only authorized keys;
  // `on_refused` runs for each connection refused (count it). Raises Error(failed) for a
  // non-loopback endpoint on a context that neither authenticates nor was told `insecure`.
  Router(zmq::context_t& context, const std::string& endpoint,
         std::function<void()> on_refused = {}, RouterLimits limits = {});

  struct Request {
    zmq::message_t peer;
    zmq::message_t payload;
    // Non-empty: the frames did not form one request, and why; reply with MalformedMessage(it).
    std::string malformed;
    // Who sent it, as authenticated by the socket's ZAP handler (the name of the peer's public
    // key); empty when the socket does not authenticate. Never taken from the message's bytes.
    std::string principal;
  };

  // Waits up to `timeout` for one request.
  std::optional<Request> receive(milliseconds timeout);
  enum class Sent {
    ok,
    full,  // the peer's outbound queue is full: it is not reading; nothing was queued
    gone,  // no such peer (it disconnected)
  };
  // `payload` is taken only when the result is ok (else it is left for a later try).
  Sent send(const zmq::message_t& peer, zmq::message_t& payload);
  Sent send(const zmq::message_t& peer, zmq::message_t&& payload) { return send(peer, payload); }
  Sent send(const zmq::message_t& peer, capnp::MessageBuilder& message) {
    return send(peer, encode(message));
  }
  const RouterLimits& limits() const { return limits_; }

  const std::string& endpoint() const { return endpoint_; }
  zmq::socket_t& socket() { return socket_; }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
  RouterLimits limits_;
};

class RpcClient {
 public:
  // `peer` names the service in error messages ("kvstore tcp://127.0.0.1:5555"). On a context
  // with a Security, a CURVE client; a refused handshake makes the call fail with
  // ErrorKind::permission_denied saying so, not a bare timeout.
  RpcClient(zmq::context_t& context, const std::string& endpoint, std::string peer);

  // Sends `request` (whose root carries `id`) and returns the first reply frame whose root has
  // the same id. Reply must be a generated struct type with getId().
  template <typename Reply>
  std::unique_ptr<Frame> call(capnp::MessageBuilder& request, std::uint64_t id,
                              milliseconds timeout) {
    std::lock_guard lock(mutex_);
    const auto deadline = Clock::now() + timeout;
    send_locked(encode(request), deadline);
    for (;;) {
      auto frame = receive_locked(deadline);
      if (!frame) {
        raise(ErrorKind::disconnected, peer_, ": no reply within ", timeout.count(), " ms");
      }
      bool match = false;
      decode_guard([&] { match = frame->root<Reply>().getId() == id; });
      if (match) return frame;
    }
  }

  // Streams: send once, then read frames until the caller has what it needs. `receive` returns
  // null at its deadline and raises ErrorKind::disconnected when the connection the stream was
  // sent on has closed since.
  void send(capnp::MessageBuilder& request, milliseconds timeout);
  std::unique_ptr<Frame> receive(milliseconds timeout);

  const std::string& peer() const { return peer_; }
  const std::string& endpoint() const { return endpoint_; }

 private:
  void send_locked(zmq::message_t message, Clock::time_point deadline);
  std::unique_ptr<Frame> receive_locked(Clock::time_point deadline, bool stream = false);
  void drain_monitor_locked();

  std::mutex mutex_;
  zmq::socket_t socket_;
  zmq::socket_t monitor_;          // PAIR receiving socket_'s disconnect events
  std::uint64_t disconnects_ = 0;  // seen so far
  std::uint64_t sent_at_ = 0;      // disconnects_ when the last message was sent
  bool closing_grace_ = false;     // the close was seen; messages still arriving were waited for
  std::string refused_;            // why the last handshake failed, when one did
  std::string endpoint_;
  std::string peer_;
};

}  // namespace kvpr::net
