// The gateway's Prometheus metrics (DESIGN.md §5), all labelled with the served model_name:
//   kvpr_http_requests_total{route,code}      every answered request (route: a known path or
//   "other") kvpr_time_to_first_token_seconds          request received → first generated token
//   kvpr_inter_token_latency_seconds          between consecutive tokens of one sequence
//   kvpr_request_latency_seconds              request received → last byte of the reply
// Registered once in the registry the gateway is given; any thread may observe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

namespace kvpr::gateway {

class GatewayMetrics {
 public:
  GatewayMetrics(prometheus::Registry& registry, const std::string& model_name);

  void count_request(const std::string& route, int code);
  prometheus::Histogram& time_to_first_token() { return *ttft_; }
  prometheus::Histogram& inter_token_latency() { return *itl_; }
  prometheus::Histogram& request_latency() { return *latency_; }

 private:
  std::string model_name_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* latency_;
};

}  // namespace kvpr::gateway
