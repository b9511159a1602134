// A client of one or more workers: submits a generation request, follows its event stream and
// returns the same GenerateResult an in-process generate() gives. A worker that stays silent for
// `idle_timeout` (no token, keep-alive or summary) is taken for dead: the call throws
// ErrorKind::disconnected instead of waiting forever. Not thread-safe; one request at a time.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/common/sampling.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/batcher.h"
#include "kvpr/worker/generator.h"

namespace kvpr::net {
class RpcClient;
}  // namespace kvpr::net

namespace kvpr::worker {

struct WorkerStatus {
  std::string name;
  std::uint64_t queued = 0;
  std::uint64_t running = 0;
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;
  std::uint64_t rejected_messages = 0;
  std::uint64_t running_sequences = 0;
  std::uint64_t waiting_sequences = 0;
  std::uint64_t max_batch = 0;
  std::uint64_t max_queue = 0;
  std::uint64_t kv_free_bytes = 0;
  std::uint64_t preemptions = 0;
  std::uint64_t cancellations = 0;
};

struct RemoteGenerate {
  GenerateRequest request;
  SamplingParams sampling;  // default: greedy, stopping at EOS (set ignore_eos for exactly N)
  planner::Policy policy = planner::Policy::kvpr;
  std::optional<std::int64_t> split;       // nullopt: the planner chooses
  std::optional<std::int64_t> host_split;  // m of the three-way split; nullopt: the worker's
  std::uint64_t deadline_unix_ms = 0;      // 0: none
};

// What a client sees of its request while it runs; every callback runs on the calling thread
// of generate(), which may call WorkerClient::stop() from inside one.
struct StreamCallbacks {
  std::function<void(std::int64_t ahead)> on_queued;  // accepted or still waiting
  std::function<void(const JobStep& step)> on_step;   // tokens and finished sequences
};

class WorkerClient {
 public:
  WorkerClient(zmq::context_t& context, const std::string& endpoint,
               std::chrono::milliseconds idle_timeout = std::chrono::seconds(10));
  ~WorkerClient();
  WorkerClient(const WorkerClient&) = delete;
  WorkerClient& operator=(const WorkerClient&) = delete;

  // Runs a request to its end: every sequence finished (stop id, length) or stopped. The result
  // holds each sequence's tokens, logits when asked for, finish reason and the summary. A
  // client destroyed while its request runs cancels it.
  GenerateResult generate(const RemoteGenerate& request, const StreamCallbacks& callbacks = {});
  // From inside a callback: stop one sequence (-1: all) of the running request now.
  void stop(std::int64_t index = -1);
  WorkerStatus status();
  const std::string& endpoint() const { return endpoint_; }
  // The worker that answered the last request (its --name).
  const std::string& last_worker() const { return last_worker_; }

 private:
  std::unique_ptr<net::RpcClient> rpc_;
  std::string endpoint_;
  std::chrono::milliseconds idle_timeout_;
  std::string last_worker_;
  std::uint64_t active_ = 0;  // the running request's id (0: none)
};

// Spreads a batch over several workers — sequence i goes to worker i mod n — runs the parts at
// the same time and merges the results in prompt order (timings: the slowest part's steps; token
// and byte counts summed).
GenerateResult generate_spread(const std::vector<WorkerClient*>& workers,
                               const RemoteGenerate& request);

}  // namespace kvpr::worker
