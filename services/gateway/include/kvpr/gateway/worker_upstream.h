// The gateway's real Upstream: kvpr workers over ZeroMQ (worker.capnp).
//
// Liveness: a monitor thread asks every worker for its stats each `poll` (its answer carries the
// running and waiting sequences, the batch and queue limits and the KV store's free bytes); a
// worker that has not answered for `dead_after` is dead: no new request goes to it. A request's
// own stream is watched the same way: the worker sends a keep-alive at least every 500 ms, so a
// stream silent for `dead_after` ends with `disconnected`.
//
// Routing: to the live worker with the most free room (free batch slots minus waiting sequences,
// then free KV bytes). A worker that refuses (full, stopping) or dies before the request
// delivered any token is passed over and the request goes to the next; once tokens have been
// delivered an error ends the request (the client has half an answer).
//
// Threads: generate() runs on the caller's thread with a WorkerClient (a socket) of its own, so
// any number run at once; workers() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "kvpr/gateway/upstream.h"
#include "kvpr/planner/planner.h"

namespace kvpr::gateway {

struct WorkerUpstreamOptions {
  std::vector<std::string> endpoints;  // the workers' ZeroMQ endpoints
  std::chrono::milliseconds poll{250};
  std::chrono::milliseconds dead_after{2000};
  planner::Policy policy = planner::Policy::kvpr;  // what requests ask the workers for
};

class WorkerUpstream final : public Upstream {
 public:
  WorkerUpstream(zmq::context_t& context, WorkerUpstreamOptions options);
  ~WorkerUpstream() override;
  WorkerUpstream(const WorkerUpstream&) = delete;
  WorkerUpstream& operator=(const WorkerUpstream&) = delete;

  void generate(const TokenRequest& request, const UpstreamCallbacks& callbacks) override;
  std::vector<WorkerRoom> workers() const override;

 private:
  struct Worker;
  void monitor();
  // The live workers, most room first, skipping those in `tried`.
  std::vector<std::size_t> ranked(const std::vector<std::size_t>& tried) const;

  zmq::context_t& context_;
  WorkerUpstreamOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace kvpr::gateway
