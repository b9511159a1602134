#include "kvpr/net/metrics.h"

#include "kvpr/common/error.h"

namespace kvpr::net {

Metrics::Metrics(int port, const std::string& bind_host)
    : registry_(std::make_shared<prometheus::Registry>()) {
  if (port >= 0) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(bind_host + ":" + std::to_string(port));
    } catch (const std::exception& e) {
      fail("cannot serve metrics on ", bind_host, ":", port, ": ", e.what());
    }
    exposer_->RegisterCollectable(registry_);
    const auto ports = exposer_->GetListeningPorts();
    port_ = ports.empty() ? port : ports.front();
  }
  rejected_ = &prometheus::BuildCounter()
                   .Name("kvpr_rejected_messages_total")
                   .Help(
                       "Requests answered with an error because they were malformed, of an "
                       "unknown type, out of range or past their deadline")
                   .Register(*registry_);
}

Metrics::~Metrics() {
  exposer_.reset();
}

prometheus::Counter& Metrics::rejected(const std::string& reason) {
  return rejected_->Add({{"reason", reason}});
}

prometheus::Histogram::BucketBoundaries latency_buckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 1e-4; b < 200; b *= 2) bounds.push_back(b);
  return bounds;
}

}  // namespace kvpr::net
