// Prometheus metrics of a service: a prometheus-cpp registry and the HTTP endpoint that serves it
// as /metrics, plus the helpers every service shares (latency buckets, the rejected-messages
// counter).
//
// The endpoint is a small blocking HTTP/1.1 server on its own std::thread rather than
// prometheus-cpp's civetweb Exposer: civetweb starts its threads with a fixed 100 KiB stack, which
// cannot hold the static TLS of cuBLAS (~94 KiB) and OpenBLAS together, so in a worker linked
// with the CUDA backend it failed to start at all. One request at a time is plenty for scrapes.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

namespace kvpr::net {

class Metrics {
 public:
  // port 0: any free port; port < 0: metrics are collected but not served.
  explicit Metrics(int port, const std::string& bind_host = "0.0.0.0");
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  int port() const { return port_; }  // -1 when not served

  // kvpr_rejected_messages_total{reason}: requests a service answered with an error because they
  // were malformed, unknown or out of range (reason: malformed, unknown_type, invalid, expired).
  prometheus::Counter& rejected(const std::string& reason);

 private:
  void serve();
  void answer(int client);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* rejected_ = nullptr;
  int port_ = -1;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe that stops the server thread
  std::thread server_;
};

// Bucket bounds in seconds from 100 µs to ~100 s, for request and step latencies.
prometheus::Histogram::BucketBoundaries latency_buckets();

}  // namespace kvpr::net
