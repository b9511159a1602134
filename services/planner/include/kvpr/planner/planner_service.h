// The planner as a service (planner.capnp over ZeroMQ ROUTER). Workers report their measured
// hardware profiles and ask for plans; a replica keeps nothing but the profiles it was sent (by
// fingerprint), so replicas run side by side and any of them answers any request.
//
// - report: stores the profile under its fingerprint, replacing an older one.
// - plan: a fingerprint the replica knows → the scheduler (ProfilePlanner) for that profile and
//   the request's model shape, kept per (fingerprint, model shape) so its bucket cache serves
//   later requests; an empty or unknown fingerprint → the cost model on the request's rates. The
//   reply names the profile it used, so a client sees a replica that lost its profile.
// - stats: counters.
// Every bad message — undecodable bytes, wrong frame count, unknown union member, out-of-range
// fields, past its deadline — gets an error reply (with the request's id when it could be read)
// and counts in kvpr_rejected_messages_total{reason}; the service keeps serving.
//
// Threads: start() binds and starts one router thread, which owns the socket and calls handle()
// for each request; stop() stops receiving, answers what had already arrived, and joins. handle()
// is thread-safe (the profile and scheduler caches are guarded by a mutex; plans run outside it),
// so a fuzzer or test can call it without sockets.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "kvpr/common/profile.h"
#include "kvpr/planner/profile_planner.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace kvpr::net {
class Metrics;
class Router;
}  // namespace kvpr::net

namespace kvpr::planner {

namespace wire_adapter {
struct DecodedPlanRequest;
}  // namespace wire_adapter

struct PlannerServiceOptions {
  std::string endpoint = "tcp://127.0.0.1:0";  // ":0": a free port; endpoint() tells which
  std::string name = "planner";
  int metrics_port = -1;                    // 0: a free port; -1: collected but not served
  std::string metrics_host = "127.0.0.1";   // the address /metrics binds
  std::int64_t bucket = kPlanBucketTokens;  // the schedulers' shape bucket, in tokens
  std::size_t max_profiles = 1024;   // reports of further fingerprints are refused `overloaded`
  std::size_t max_schedulers = 256;  // (fingerprint, model shape) schedulers kept; then one dropped
};

struct PlannerServiceStats {
  std::uint64_t plan_requests = 0;
  std::uint64_t profile_reports = 0;
  std::uint64_t profiles = 0;
  std::uint64_t rejected_messages = 0;
};

class PlannerService {
 public:
  // Metrics are registered (and served when metrics_port >= 0) here; the socket binds in start().
  PlannerService(zmq::context_t& context, PlannerServiceOptions options);
  ~PlannerService();  // stop()
  PlannerService(const PlannerService&) = delete;
  PlannerService& operator=(const PlannerService&) = delete;

  // Binds options.endpoint and starts serving; Error(failed) when it cannot listen.
  void start();
  // Idempotent. Returns once every request received before it was called has been answered.
  void stop();

  const std::string& endpoint() const { return endpoint_; }  // bound endpoint, after start()
  int metrics_port() const;                                  // -1 when not served
  const std::string& name() const { return options_.name; }

  // One request's bytes in, the reply's bytes out. Never throws: a bad request gets an error
  // reply and is counted as rejected.
  zmq::message_t handle(const void* data, std::size_t size);
  // The reply to frames that did not form one request (Router's `malformed`), counted.
  zmq::message_t reject_frames(const std::string& why);

  PlannerServiceStats stats() const;
  prometheus::Registry& registry();

 private:
  struct Instruments;
  using SchedulerKey = std::pair<std::string, std::vector<std::int64_t>>;

  void serve();  // the router thread
  zmq::message_t reject(std::uint64_t id, const Error& error, const std::string& reason);
  zmq::message_t serve_plan(std::uint64_t id, const wire_adapter::DecodedPlanRequest& request);
  zmq::message_t serve_report(std::uint64_t id, HardwareProfile profile);
  zmq::message_t serve_stats(std::uint64_t id);
  // The scheduler for a known fingerprint and this model shape; null when the fingerprint is
  // unknown or empty.
  std::shared_ptr<ProfilePlanner> scheduler(const std::string& fingerprint, const StepShape& model);

  zmq::context_t& context_;
  PlannerServiceOptions options_;
  std::unique_ptr<net::Metrics> metrics_;
  std::unique_ptr<Instruments> instruments_;
  std::unique_ptr<net::Router> router_;  // used by the router thread between start and stop
  std::string endpoint_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mutex_;  // guards profiles_ and schedulers_
  std::map<std::string, std::shared_ptr<const HardwareProfile>> profiles_;
  std::map<SchedulerKey, std::shared_ptr<ProfilePlanner>> schedulers_;

  std::atomic<std::uint64_t> plan_requests_{0};
  std::atomic<std::uint64_t> profile_reports_{0};
  std::atomic<std::uint64_t> rejected_{0};
};

}  // namespace kvpr::planner
