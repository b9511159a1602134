// A client of one or more workers: submits a generation request, follows its event stream and
// returns the same GenerateResult an in-process generate() gives. A worker that stays silent for
// `idle_timeout` (no token, keep-alive or summary) is taken for dead: the call throws
// ErrorKind::disconnected instead of waiting forever. Not thread-safe; one request at a time.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/planner/planner.h"
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
};

struct RemoteGenerate {
  GenerateRequest request;
  planner::Policy policy = planner::Policy::kvpr;
  std::optional<std::int64_t> split;  // nullopt: the planner chooses
};

class WorkerClient {
 public:
  WorkerClient(zmq::context_t& context, const std::string& endpoint,
               std::chrono::milliseconds idle_timeout = std::chrono::seconds(10));
  ~WorkerClient();
  WorkerClient(const WorkerClient&) = delete;
  WorkerClient& operator=(const WorkerClient&) = delete;

  GenerateResult generate(const RemoteGenerate& request, const StepCallback& on_step = {});
  WorkerStatus status();
  const std::string& endpoint() const { return endpoint_; }
  // The worker that answered the last request (its --name).
  const std::string& last_worker() const { return last_worker_; }

 private:
  std::unique_ptr<net::RpcClient> rpc_;
  std::string endpoint_;
  std::chrono::milliseconds idle_timeout_;
  std::string last_worker_;
};

// Spreads a batch over several workers — sequence i goes to worker i mod n — runs the parts at
// the same time and merges the results in prompt order (timings: the slowest part's steps; token
// and byte counts summed). `on_step` sees each part's events with tokens of that part only.
GenerateResult generate_spread(const std::vector<WorkerClient*>& workers,
                               const RemoteGenerate& request);

}  // namespace kvpr::worker
