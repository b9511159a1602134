// The worker service's executor thread: hands accepted requests to the continuous batch, runs its
// steps, and turns what each step produced into events on the inproc pipe that the router thread
// forwards to the clients.
#include <algorithm>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvpr/worker/trace.h"
#include "worker_job.h"
#include "worker_metrics.h"
#include "worker_wire.h"

namespace kvpr::worker {

using Clock = std::chrono::steady_clock;

namespace {

void send(zmq::socket_t& events, const zmq::message_t& peer, capnp::MessageBuilder& message) {
  zmq::message_t id(peer.data(), peer.size());
  events.send(id, zmq::send_flags::sndmore);
  events.send(net::encode(message), zmq::send_flags::none);
}

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

void WorkerService::count_outcome(bool ok) {
  std::lock_guard lock(mutex_);
  ++(ok ? completed_ : failed_);
}

void WorkerService::finished(const Job& job) {
  std::lock_guard lock(mutex_);
  std::erase_if(live_, [&](const auto& j) { return j.get() == &job; });
}

void WorkerService::wire_job(const std::shared_ptr<Job>& job, zmq::socket_t& events) {
  auto& m = *instruments_;
  BatchJob& b = *job->batch;
  Job* j = job.get();  // the batch job lives inside the Job, which outlives its callbacks
  b.on_step = [j, &m, &events](const BatchJob& batch, const JobStep& step) {
    const auto now = Clock::now();
    j->last_event = now.time_since_epoch().count();
    if (!step.tokens.empty()) {
      if (!j->first_token_seen) {
        m.time_to_first_token->Observe(seconds(now - batch.accepted_at));
        j->first_token_seen = true;
      } else {
        m.inter_token->Observe(seconds(now - j->last_token));
      }
      j->last_token = now;
      m.tokens->Increment(static_cast<double>(step.tokens.size()));
    }
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(batch.id);
    wire_adapter::encode_step(step, event.initTokens());
    send(events, j->peer, message);
  };
  // A request is counted before its last event leaves: a client that asks for the status (or a
  // scrape) once it has that event sees the request counted. The job is forgotten after the send
  // (forgetting it may free the job, and with it the batch and the peer this callback uses).
  b.on_done = [this, j, &m, &events](const BatchJob& batch, const GenerateResult& summary) {
    m.requests_completed->Increment();
    m.request_latency->Observe(seconds(Clock::now() - batch.accepted_at));
    count_outcome(true);
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(batch.id);
    wire_adapter::set_summary(event.initDone(), summary, options_.name);
    send(events, j->peer, message);
    finished(*j);
  };
  b.on_error = [this, j, &m, &events](const BatchJob& batch, const Error& e) {
    log::warn(options_.name, ": request ", batch.id, " failed: ", e.what());
    m.requests_failed->Increment();
    count_outcome(false);
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(batch.id);
    net::set_error(event.initError(), e);
    send(events, j->peer, message);
    finished(*j);
  };
}

void WorkerService::execute() {
  zmq::socket_t events = net::make_socket(context_, zmq::socket_type::push);
  events.connect(events_endpoint_);
  BatcherOptions batching = options_.batching;
  batching.engine.trace = trace_ != nullptr;
  batching.engine.host_split = options_.host_split;
  batching.engine.host_threads = options_.host_threads;
  Batcher batcher(model_, backend_, store_, planner_, batching);
  auto& m = *instruments_;
  std::int64_t step = 0;
  batcher.on_decode_step = [&](const StepStats& stats) {
    ++step;
    m.observe_step(stats);
    if (options_.corrector)
      m.observe_drift(*options_.corrector, options_.corrector->observe(stats));
    if (trace_) trace_->add_step(stats, str("step ", step, " b=", stats.s.size()));
  };
  Clock::time_point kv_polled{};
  auto poll_kv = [&] {  // at most every 200 ms: one round trip to a remote store
    if (Clock::now() - kv_polled < std::chrono::milliseconds(200)) return;
    kv_polled = Clock::now();
    std::uint64_t free = 0;
    try {
      free = store_.stats().free_bytes();
    } catch (const Error&) {  // unreachable: no room to offer
    }
    std::lock_guard lock(mutex_);
    kv_free_bytes_ = free;
  };
  poll_kv();
  std::vector<std::shared_ptr<Job>> arrivals;
  // Jobs the batcher holds, kept alive until they finish (their callbacks point into them).
  std::vector<std::shared_ptr<Job>> held;
  bool idle_wait = false;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      if (!batcher.busy()) {
        wake_.wait(lock, [&] { return stopping_ || !inbox_.empty(); });
      } else if (idle_wait) {  // waiting for room that other workers hold in the store
        wake_.wait_for(lock, std::chrono::milliseconds(5));
      }
      if (inbox_.empty() && !batcher.busy()) return;  // stopping, and nothing left to drain
      arrivals.assign(inbox_.begin(), inbox_.end());
      inbox_.clear();
    }
    for (auto& job : arrivals) {
      wire_job(job, events);
      held.push_back(job);
      try {  // a store that went away fails the request, never the executor
        if (batcher.running() == 0 && options_.prepare) options_.prepare();
        batcher.submit(job->batch);
      } catch (const Error& e) {
        job->batch->failed = true;
        job->batch->on_error(*job->batch, e);
      }
    }
    arrivals.clear();
    try {
      idle_wait = !batcher.step();
    } catch (const std::exception& e) {  // the batcher fails jobs itself; this is a broken step
      log::error(options_.name, ": batch step: ", e.what());
      idle_wait = true;
    }
    std::erase_if(held,
                  [](const auto& job) { return job->batch->open == 0 || job->batch->failed; });
    poll_kv();
    std::lock_guard lock(mutex_);
    running_seqs_ = batcher.running();
    waiting_seqs_ = batcher.waiting();
    const auto& c = batcher.counters();
    m.preemptions->Increment(static_cast<double>(c.preemptions - counters_.preemptions));
    m.cancellations->Increment(static_cast<double>(c.cancellations - counters_.cancellations));
    counters_ = c;
    m.running_sequences->Set(static_cast<double>(running_seqs_));
    m.waiting_sequences->Set(static_cast<double>(waiting_seqs_));
    std::uint64_t waiting = 0;
    for (const auto& job : live_) waiting += job->batch->started ? 0 : 1;
    m.queue_depth->Set(static_cast<double>(waiting));
  }
}

}  // namespace kvpr::worker
