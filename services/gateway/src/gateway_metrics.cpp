#include "gateway_metrics.h"

#include "kvpr/net/metrics.h"

namespace kvpr::gateway {
namespace {

prometheus::Histogram* histogram(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help, const std::string& model_name) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
      {{"model_name", model_name}}, net::latency_buckets());
}

}  // namespace

GatewayMetrics::GatewayMetrics(prometheus::Registry& registry, const std::string& model_name)
    : model_name_(model_name),
      requests_(&prometheus::BuildCounter()
                     .Name("kvpr_http_requests_total")
                     .Help("HTTP requests answered by the gateway, by route and status code")
                     .Register(registry)),
      ttft_(histogram(registry, "kvpr_time_to_first_token_seconds",
                      "From a request's arrival to its first generated token", model_name)),
      itl_(histogram(registry, "kvpr_inter_token_latency_seconds",
                     "Between consecutive generated tokens of one sequence", model_name)),
      latency_(histogram(registry, "kvpr_request_latency_seconds",
                         "From a request's arrival to the end of its reply", model_name)) {}

void GatewayMetrics::count_request(const std::string& route, int code) {
  requests_->Add({{"route", route}, {"code", std::to_string(code)}, {"model_name", model_name_}})
      .Increment();
}

}  // namespace kvpr::gateway
