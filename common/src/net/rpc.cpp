#include "kvpr/net/rpc.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "kvpr/net/security.h"

namespace kvpr::net {

zmq::socket_t make_socket(zmq::context_t& context, zmq::socket_type type) {
  zmq::socket_t socket(context, type);
  socket.set(zmq::sockopt::linger, 0);
  return socket;
}

std::string bind(zmq::socket_t& socket, const std::string& endpoint) {
  std::string spec = endpoint;
  if (spec.starts_with("tcp://") && spec.ends_with(":0")) spec.replace(spec.size() - 1, 1, "*");
  try {
    socket.bind(spec);
  } catch (const zmq::error_t& e) {
    fail("cannot listen on '", endpoint, "': ", e.what());
  }
  return socket.get(zmq::sockopt::last_endpoint);
}

std::uint64_t next_request_id() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1);
}

std::uint64_t now_unix_ms() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

std::uint64_t deadline_unix_ms(milliseconds timeout) {
  return now_unix_ms() + static_cast<std::uint64_t>(timeout.count());
}

namespace {

int poll_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1000));
}

}  // namespace

Router::Router(zmq::context_t& context, const std::string& endpoint,
               std::function<void()> on_refused, RouterLimits limits)
    : socket_(make_socket(context, zmq::socket_type::router)), limits_(limits) {
  Security::secure_server(context, socket_, endpoint, std::move(on_refused));
  socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limits_.max_message_bytes));
  socket_.set(zmq::sockopt::rcvhwm, limits_.receive_queue);
  socket_.set(zmq::sockopt::sndhwm, limits_.send_queue);
  // A full or vanished peer is reported by send() (EAGAIN / EHOSTUNREACH), not dropped unseen.
  socket_.set(zmq::sockopt::router_mandatory, 1);
  endpoint_ = bind(socket_, endpoint);
}

std::optional<Router::Request> Router::receive(milliseconds timeout) {
  zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, timeout);
  if ((item.revents & ZMQ_POLLIN) == 0) return std::nullopt;
  std::vector<zmq::message_t> frames;
  do {
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
    frames.push_back(std::move(frame));
  } while (frames.back().more());
  if (frames.empty()) return std::nullopt;
  Request request;
  request.peer = std::move(frames[0]);
  if (const char* user = zmq_msg_gets(frames.back().handle(), "User-Id"); user != nullptr) {
    request.principal = user;
  }
  if (frames.size() != 2) {
    request.malformed = str(frames.size() - 1, " frames, expected 1 Cap'n Proto message");
  } else {
    request.payload = std::move(frames[1]);
  }
  return request;
}

Router::Sent Router::send(const zmq::message_t& peer, zmq::message_t& payload) {
  zmq::message_t id(peer.data(), peer.size());
  try {
    if (!socket_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return Sent::full;
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return Sent::gone;
    throw;
  }
  // The routing frame was taken: the message's last frame always follows it.
  socket_.send(payload, zmq::send_flags::dontwait);
  return Sent::ok;
}

RpcClient::RpcClient(zmq::context_t& context, const std::string& endpoint, std::string peer)
    : socket_(make_socket(context, zmq::socket_type::dealer)),
      monitor_(make_socket(context, zmq::socket_type::pair)),
      endpoint_(endpoint),
      peer_(std::move(peer)) {
  static std::atomic<std::uint64_t> monitors{0};
  const std::string address = str("inproc://kvpr-rpc-monitor-", monitors.fetch_add(1));
  Security::secure_client(context, socket_);
  constexpr int kEvents = ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                          ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                          ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
  if (zmq_socket_monitor(socket_.handle(), address.c_str(), kEvents) != 0) {
    fail(peer_, ": cannot monitor the connection: ", zmq_strerror(zmq_errno()));
  }
  monitor_.connect(address);
  // Queue nothing for a peer that is not connected: a send waits for a live connection instead.
  socket_.set(zmq::sockopt::immediate, 1);
  // What a service can make a client hold: no frame over the codec's limit.
  socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxMessageBytes));
  socket_.set(zmq::sockopt::reconnect_ivl, 100);
  socket_.set(zmq::sockopt::reconnect_ivl_max, 1000);
  try {
    socket_.connect(endpoint);
  } catch (const zmq::error_t& e) {
    fail(peer_, ": cannot connect to '", endpoint, "': ", e.what());
  }
}

void RpcClient::send(capnp::MessageBuilder& request, milliseconds timeout) {
  std::lock_guard lock(mutex_);
  send_locked(encode(request), Clock::now() + timeout);
}

std::unique_ptr<Frame> RpcClient::receive(milliseconds timeout) {
  std::lock_guard lock(mutex_);
  return receive_locked(Clock::now() + timeout, /*stream=*/true);
}

void RpcClient::drain_monitor_locked() {
  for (;;) {
    zmq::message_t event;  // [u16 event, u32 value], then the endpoint
    if (!monitor_.recv(event, zmq::recv_flags::dontwait)) return;
    while (event.more()) {
      zmq::message_t rest;
      if (!monitor_.recv(rest, zmq::recv_flags::dontwait) || !rest.more()) break;
    }
    std::uint16_t kind = 0;
    std::uint32_t value = 0;
    if (event.size() >= 6) {
      std::memcpy(&kind, event.data(), sizeof kind);
      std::memcpy(&value, event.data<char>() + 2, sizeof value);
    }
    if (kind == ZMQ_EVENT_DISCONNECTED) {
      ++disconnects_;
    } else if (kind == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      refused_ = str("refused this client's key (ZAP status ", value,
                     "; is its .pub in the service's authorized/?)");
    } else {
      refused_ =
          "the security handshake failed (both ends need the same mode: --keys on both, "
          "with the service's server.pub, or on neither)";
    }
  }
}

void RpcClient::send_locked(zmq::message_t message, Clock::time_point deadline) {
  drain_monitor_locked();  // a connection that closed before this message is not its connection
  sent_at_ = disconnects_;
  closing_grace_ = false;
  for (;;) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLOUT, 0};
    zmq::poll(&item, 1, milliseconds(poll_ms(deadline)));
    if ((item.revents & ZMQ_POLLOUT) != 0 && socket_.send(message, zmq::send_flags::dontwait)) {
      return;
    }
    if (Clock::now() >= deadline) {
      drain_monitor_locked();
      if (!refused_.empty()) raise(ErrorKind::permission_denied, peer_, ": ", refused_);
      raise(ErrorKind::disconnected, peer_, ": not reachable at ", endpoint_);
    }
  }
}

std::unique_ptr<Frame> RpcClient::receive_locked(Clock::time_point deadline, bool stream) {
  for (;;) {
    std::array<zmq::pollitem_t, 2> items{
        {{socket_.handle(), 0, ZMQ_POLLIN, 0}, {monitor_.handle(), 0, ZMQ_POLLIN, 0}}};
    zmq::poll(items.data(), items.size(), milliseconds(poll_ms(deadline)));
    const auto& item = items[0];
    if ((items[1].revents & ZMQ_POLLIN) != 0) drain_monitor_locked();
    if ((item.revents & ZMQ_POLLIN) != 0) {
      zmq::message_t frame;
      if (socket_.recv(frame, zmq::recv_flags::dontwait)) {
        while (frame.more()) {  // a well-behaved service sends one frame; drop any extras
          zmq::message_t extra;
          if (!socket_.recv(extra, zmq::recv_flags::dontwait)) break;
          if (!extra.more()) break;
        }
        return std::make_unique<Frame>(frame);
      }
    }
    // Everything the peer sent before closing has been read: the stream cannot go on. (The close
    // can be seen before the last messages' arrival is: a short wait lets them in first.)
    if (stream && disconnects_ != sent_at_ && !closing_grace_) {
      closing_grace_ = true;
      zmq::pollitem_t last{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&last, 1, milliseconds(50));
      continue;
    }
    if (stream && disconnects_ != sent_at_) {
      raise(ErrorKind::disconnected, peer_, ": the connection closed (the service went away)");
    }
    if (Clock::now() >= deadline) return nullptr;
  }
}

}  // namespace kvpr::net
