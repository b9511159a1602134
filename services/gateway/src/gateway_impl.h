// The Gateway's state, shared by gateway.cpp (server lifecycle, routes, auth, errors) and
// generate.cpp (the two generation routes, plain and streamed). httplib stays out of the public
// header: it is large, and its compile flags must come from pkg-config (TOOLCHAIN.md).
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "gateway_metrics.h"
#include "kvpr/gateway/gateway.h"
#include "kvpr/gateway/request.h"
#include "run.h"

namespace kvpr::gateway {

using Clock = std::chrono::steady_clock;

class Gateway::Impl {
 public:
  Impl(GatewayOptions options, Upstream& upstream, const Tokenizer& tokenizer);

  void start();
  void stop();
  int port() const { return port_; }

  // Counts a request in flight for as long as it lives (stop() waits for none to be left).
  class InFlight {
   public:
    explicit InFlight(Impl& impl);
    ~InFlight();
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

   private:
    Impl* impl_;
  };

  // generate.cpp: POST /v1/completions (chat false) and /v1/chat/completions (chat true).
  void generate(const httplib::Request& request, httplib::Response& response, bool chat);
  // Parses, tokenizes and checks a body (throws ApiError, or Error from the tokenizer).
  Job make_job(const std::string& body, bool chat);

  // The request with its deadline (options.request_timeout from now).
  TokenRequest with_deadline(TokenRequest request) const {
    if (options_.request_timeout.count() > 0) {
      request.deadline = std::chrono::steady_clock::now() + options_.request_timeout;
    }
    return request;
  }
  // Writes an OpenAI-shaped error reply.
  static void reply_error(httplib::Response& response, const ApiError& error);
  // The reply for an error the upstream raised (kvpr::Error kinds → 400/501/502/503).
  static ApiError upstream_error(const Error& error);

 private:
  void routes();
  bool authorized(const httplib::Request& request, httplib::Response& response) const;

  GatewayOptions options_;
  Upstream* upstream_;
  const Tokenizer* tokenizer_;
  std::unique_ptr<prometheus::Registry> own_registry_;  // when options_.registry is null
  prometheus::Registry* registry_;
  GatewayMetrics metrics_;
  ModelLimits limits_;
  std::atomic<std::uint64_t> next_id_{1};

  std::unique_ptr<httplib::Server> server_;  // an SSLServer with options_.tls_cert
  std::thread listener_;
  int port_ = -1;
  std::atomic<bool> stopping_{false};
  std::mutex in_flight_mutex_;
  std::condition_variable in_flight_cv_;
  std::int64_t in_flight_ = 0;
};

}  // namespace kvpr::gateway
