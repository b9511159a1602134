// A worker as a service: clients submit generation requests over ZeroMQ (worker.capnp) and get
// back a stream of events — accepted, the tokens of every step, keep-alives while a step runs
// long, and a summary or an error. The worker runs on the seams it is given (a loaded model on a
// backend, a KvStoreClient and a Planner), so the same object serves the embedded runtime
// (in-process store and planner, inproc:// transport) and the `kvpr-worker` process (the kvstore
// daemon and planner replicas over tcp://).
//
// Threads: a router thread owns the listening socket (decodes, validates, queues, answers stats
// and cancels, forwards events, sends keep-alives with queue positions); an executor thread runs
// the continuous batch (batcher.h): requests join and leave it between decode steps. stop()
// refuses new requests, finishes the queued and running ones, delivers their last events and
// returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "kvpr/kernels/backend.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "kvpr/net/rpc.h"
#include "kvpr/planner/fallback_planner.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/batcher.h"
#include "kvpr/worker/device_model.h"

namespace kvpr {
class Error;
}  // namespace kvpr

namespace capnp {
class MessageBuilder;
}  // namespace capnp

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace kvpr::net {
class Metrics;
class Router;
}  // namespace kvpr::net

namespace kvpr::worker {

struct WorkerMetrics;
class TraceWriter;
class ProfileCorrector;

struct WorkerServiceOptions {
  std::string endpoint = "tcp://127.0.0.1:0";
  std::string name = "worker";
  std::string model_name;                  // metrics label
  int metrics_port = -1;                   // 0: a free port; -1: not served
  std::string metrics_host = "127.0.0.1";  // the address /metrics binds
  std::chrono::milliseconds keepalive{500};
  // A client whose events could not be delivered for this long (it does not read them: its
  // queue is full, or it disconnected without cancelling) has its requests cancelled and their
  // sequences freed. What waits for it is bounded by this, by 1024 events and by 16 MiB.
  std::chrono::milliseconds stalled_client{10000};
  // What one client can make the worker hold on its socket (rpc.h): a request is a batch of
  // prompts (64 prompts of 32k tokens are 8 MiB), so 4 x 16 MiB inbound; 1024 events outbound
  // (a shorter queue kept live streams waiting on ZeroMQ's reopening of it under load).
  net::RouterLimits router_limits{std::size_t{16} << 20, 4, 1024};
  std::size_t max_queue = 64;     // waiting requests; more are answered `overloaded`
  BatcherOptions batching;        // --max-batch, --max-prefill-tokens-per-step, admission
  std::function<void()> prepare;  // before each request (e.g. map a reconnected store's memory)
  double link_bytes_per_s = 0;    // the host->device rate plans assume (0: the backend's nominal)
  std::string trace_path;         // write every decode step's queue spans here (Chrome trace)
  // Sees every decode step and refits a drifting profile (profile_drift.h); borrowed, outlives
  // the service; null: plans without a profile, nothing to correct.
  ProfileCorrector* corrector = nullptr;
  // The decorator that plans locally when no planner replica answers (fallback_planner.h), if the
  // planner passed in has one; borrowed, outlives the service. Its fallbacks are counted in
  // kvpr_planner_fallbacks_total.
  planner::FallbackPlanner* fallback = nullptr;
  // The three-way split (EngineOptions): a fixed host split for every request and the host
  // attention pool's threads; set in-process (the wire does not carry them).
  std::optional<std::int64_t> host_split = std::nullopt;
  int host_threads = 1;
};

class WorkerService {
 public:
  WorkerService(zmq::context_t& context, const DeviceModel& model, kernels::Backend& backend,
                kvstore::KvStoreClient& store, planner::Planner& planner,
                WorkerServiceOptions options);
  ~WorkerService();
  WorkerService(const WorkerService&) = delete;
  WorkerService& operator=(const WorkerService&) = delete;

  void start();
  void stop();

  const std::string& endpoint() const;
  int metrics_port() const;
  // The worker's metrics (what its /metrics serves), e.g. for an embedded gateway to serve too.
  prometheus::Registry& registry();

 private:
  struct Job;

  void route();
  void forward_events();
  // Sends an event to its client, or queues it behind the client's undelivered ones.
  void deliver(const zmq::message_t& peer, zmq::message_t payload);
  void flush_backlogs();
  // Cancels every live request of `peer` (a client that stalled or went away).
  void abandon(const std::string& peer, bool gone);
  void keep_alive();  // `working` / `queued` to each live request's client when one is due
  void execute();
  // The executor's hooks of one request: its events go to the inproc pipe.
  void wire_job(const std::shared_ptr<Job>& job, zmq::socket_t& events);
  void count_outcome(bool ok);    // completed_ or failed_, before the last event is sent
  void finished(const Job& job);  // forgets the job, after its last event
  // The reply to one request: accepted (queued), stats, nothing (a cancel) or an error.
  zmq::message_t handle_request(const zmq::message_t& peer, const zmq::message_t& payload);
  zmq::message_t stats_event(std::uint64_t id);
  void cancel(const zmq::message_t& peer, std::uint64_t request, std::int64_t index);
  void reject(const std::string& reason);

  zmq::context_t& context_;
  const DeviceModel& model_;
  kernels::Backend& backend_;
  kvstore::KvStoreClient& store_;
  planner::Planner& planner_;
  WorkerServiceOptions options_;

  std::unique_ptr<net::Metrics> metrics_;
  std::unique_ptr<WorkerMetrics> instruments_;
  std::unique_ptr<TraceWriter> trace_;  // when options.trace_path is set
  std::unique_ptr<net::Router> router_;
  std::string events_endpoint_;
  std::unique_ptr<zmq::socket_t> events_in_;
  // Router thread only: events a client's full queue did not take yet, by routing id.
  struct Backlog {
    std::deque<zmq::message_t> events;
    std::size_t bytes = 0;
    std::chrono::steady_clock::time_point since;  // the oldest undelivered event's attempt
  };
  std::map<std::string, Backlog> backlogs_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> inbox_;  // accepted, not yet given to the batcher
  std::vector<std::shared_ptr<Job>> live_;  // accepted and not finished, in arrival order
  bool stopping_ = false;
  bool started_ = false;
  bool executor_done_ = false;  // the executor has returned: drain its last events and stop
  std::uint64_t completed_ = 0;
  std::uint64_t failed_ = 0;
  std::uint64_t rejected_ = 0;
  // The batch as the executor last saw it (for stats).
  std::uint64_t running_seqs_ = 0;
  std::uint64_t waiting_seqs_ = 0;
  BatcherCounters counters_;
  // The KV store's free bytes as the executor last asked (a routing hint in stats; the router
  // thread never waits on the store).
  std::uint64_t kv_free_bytes_ = 0;

  std::thread router_thread_;
  std::thread executor_thread_;
};

}  // namespace kvpr::worker
