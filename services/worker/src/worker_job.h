// A request as the worker service holds it between its two threads: the router thread accepts
// it, answers cancels and sends keep-alives; the executor thread runs it in the batch.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <zmq.hpp>

#include "kvpr/worker/batcher.h"
#include "kvpr/worker/worker_service.h"

namespace kvpr::worker {

struct WorkerService::Job {
  using Clock = std::chrono::steady_clock;

  zmq::message_t peer;  // the client's routing id: only this peer may cancel the request
  std::shared_ptr<BatchJob> batch;
  std::atomic<Clock::rep> last_event{0};  // for keep-alives, read by the router thread
  // Executor thread only.
  bool first_token_seen = false;
  Clock::time_point last_token;
};

}  // namespace kvpr::worker
