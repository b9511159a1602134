// What the planner service tests share: a synthetic hardware profile and model
// (synthetic_profile.h), a plan request, plan comparison, a raw DEALER peer that sends arbitrary
// frames, and reading a metric from a Prometheus registry.
#pragma once

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "../slowdown.h"
#include "kvpr/common/profile.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/step_model.h"
#include "schemas/planner.capnp.h"
#include "synthetic_profile.h"

namespace kvpr::planner::testing {

inline PlanRequest plan_request(std::vector<std::int64_t> s, Policy policy = Policy::kvpr) {
  PlanRequest r;
  r.shape = {4096, 4096, 2};
  r.n_layers = 4;
  r.s = std::move(s);
  r.policy = policy;
  r.rates = {16e9, 300e12};
  return r;
}

inline void expect_same_plan(const Plan& got, const Plan& want) {
  EXPECT_EQ(got.policy, want.policy);
  EXPECT_EQ(got.l, want.l);
  EXPECT_EQ(got.chunk, want.chunk);
  EXPECT_EQ(got.paper_schedule, want.paper_schedule);
  EXPECT_EQ(got.ratio, want.ratio);
  EXPECT_EQ(got.predicted_step_s, want.predicted_step_s);
  EXPECT_EQ(got.reason, want.reason);
}

// The value of a counter or gauge (or a histogram's sample count) with exactly these labels; -1
// when there is none.
inline double metric_value(prometheus::Registry& registry, const std::string& name,
                           const std::map<std::string, std::string>& labels = {}) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& pair : m.label) have[pair.name] = pair.value;
      if (have != labels) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return m.counter.value;
        case prometheus::MetricType::Gauge:
          return m.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(m.histogram.sample_count);
        default:
          return -1;
      }
    }
  }
  return -1;
}

// A client that sends whatever frames it is given and reads one reply frame.
class RawPeer {
 public:
  RawPeer(zmq::context_t& context, const std::string& endpoint)
      : socket_(net::make_socket(context, zmq::socket_type::dealer)) {
    socket_.connect(endpoint);
  }

  void send(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      zmq::message_t frame(frames[i].data(), frames[i].size());
      socket_.send(frame, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  void send(capnp::MessageBuilder& message) {
    auto bytes = net::encode(message);
    socket_.send(bytes, zmq::send_flags::none);
  }

  // One reply, or null after `timeout`.
  std::unique_ptr<net::Frame> receive(std::chrono::milliseconds timeout = kvpr::test_timing::slow(
                                          std::chrono::milliseconds(2000))) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, timeout);
    if ((item.revents & ZMQ_POLLIN) == 0) return nullptr;
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return nullptr;
    return std::make_unique<net::Frame>(frame);
  }

 private:
  zmq::socket_t socket_;
};

inline std::string bytes_of(capnp::MessageBuilder& message) {
  auto bytes = net::encode(message);
  return std::string(static_cast<const char*>(bytes.data()), bytes.size());
}

}  // namespace kvpr::planner::testing
