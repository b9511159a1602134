// Prometheus metrics of a service: the registry and the HTTP exposer that serves /metrics, plus
// the helpers every service shares (latency buckets, the rejected-messages counter). The registry
// is declared before the exposer so the exposer stops serving before the registry goes away.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

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
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = -1;
  prometheus::Family<prometheus::Counter>* rejected_ = nullptr;
};

// Bucket bounds in seconds from 100 µs to ~100 s, for request and step latencies.
prometheus::Histogram::BucketBoundaries latency_buckets();

}  // namespace kvpr::net
