#include "kvpr/gateway/worker_upstream.h"

#include <algorithm>

#include "kvpr/common/log.h"
#include "kvpr/net/rpc.h"
#include "kvpr/worker/worker_client.h"

namespace kvpr::gateway {

using Clock = std::chrono::steady_clock;

struct WorkerUpstream::Worker {
  std::string endpoint;
  WorkerRoom room;              // guarded by the upstream's mutex
  Clock::time_point last_seen;  // of its last stats answer
  std::int64_t in_flight = 0;   // requests this gateway sent and has not seen end
};

WorkerUpstream::WorkerUpstream(zmq::context_t& context, WorkerUpstreamOptions options)
    : context_(context), options_(std::move(options)) {
  if (options_.endpoints.empty()) fail("the gateway needs at least one worker endpoint");
  for (const auto& endpoint : options_.endpoints) {
    auto w = std::make_unique<Worker>();
    w->endpoint = endpoint;
    w->room.name = endpoint;
    workers_.push_back(std::move(w));
  }
  monitor_ = std::thread([this] { monitor(); });
}

WorkerUpstream::~WorkerUpstream() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  monitor_.join();
}

// Polls every worker's stats; one client per worker, re-made after a failure (a fresh socket
// forgets a dead peer's queued messages).
void WorkerUpstream::monitor() {
  std::vector<std::unique_ptr<worker::WorkerClient>> clients(workers_.size());
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      WorkerRoom room;
      bool ok = false;
      try {
        if (!clients[i]) {
          clients[i] = std::make_unique<worker::WorkerClient>(context_, workers_[i]->endpoint,
                                                              options_.dead_after / 2);
        }
        const auto st = clients[i]->status();
        room.name = st.name;
        room.running = static_cast<std::int64_t>(st.running_sequences);
        room.queued = static_cast<std::int64_t>(st.waiting_sequences);
        room.max_batch = static_cast<std::int64_t>(st.max_batch);
        room.max_queue = static_cast<std::int64_t>(st.max_queue);
        room.kv_free_bytes = st.kv_free_bytes;
        ok = true;
      } catch (const Error& e) {
        clients[i].reset();
        log::debug("worker ", workers_[i]->endpoint, ": ", e.what());
      }
      std::lock_guard guard(mutex_);
      Worker& w = *workers_[i];
      const auto now = Clock::now();
      if (ok) {
        room.alive = true;
        w.room = room;
        w.last_seen = now;
      } else if (now - w.last_seen >= options_.dead_after) {
        if (w.room.alive) log::warn("worker ", w.endpoint, " stopped answering: passed over");
        w.room.alive = false;
      }
    }
    lock.lock();
    wake_.wait_for(lock, options_.poll, [&] { return stopping_; });
  }
}

std::vector<WorkerRoom> WorkerUpstream::workers() const {
  std::lock_guard lock(mutex_);
  std::vector<WorkerRoom> out;
  for (const auto& w : workers_) out.push_back(w->room);
  return out;
}

std::vector<std::size_t> WorkerUpstream::ranked(const std::vector<std::size_t>& tried) const {
  std::lock_guard lock(mutex_);
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i]->room.alive && std::find(tried.begin(), tried.end(), i) == tried.end()) {
      order.push_back(i);
    }
  }
  // Free batch slots, less what waits there and what this gateway sent since the last poll.
  auto room = [&](std::size_t i) {
    const Worker& w = *workers_[i];
    return w.room.max_batch - w.room.running - w.room.queued - w.in_flight;
  };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (room(a) != room(b)) return room(a) > room(b);
    return workers_[a]->room.kv_free_bytes > workers_[b]->room.kv_free_bytes;
  });
  return order;
}

namespace {

TokenEvent token_event(const worker::TokenOut& t) {
  TokenEvent ev{t.index, t.token, t.logprob, {}};
  for (const auto& top : t.top) ev.top.emplace_back(top.token, top.logprob);
  return ev;
}

worker::RemoteGenerate remote_request(const TokenRequest& r, planner::Policy policy) {
  worker::RemoteGenerate g;
  g.request.prompts.assign(static_cast<std::size_t>(r.n), r.prompt);
  g.request.max_new_tokens = r.max_tokens;
  g.request.score_prompt = r.score_prompt;
  g.sampling = r.sampling;
  g.policy = policy;
  if (r.deadline != Clock::time_point::max()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(r.deadline - Clock::now());
    g.deadline_unix_ms =
        net::now_unix_ms() + static_cast<std::uint64_t>(std::max<std::int64_t>(1, left.count()));
  }
  return g;
}

}  // namespace

void WorkerUpstream::generate(const TokenRequest& request, const UpstreamCallbacks& callbacks) {
  if (request.n < 1) fail("n must be at least 1, got ", request.n);
  const worker::RemoteGenerate remote = remote_request(request, options_.policy);
  std::vector<std::size_t> tried;
  std::string last_error = "no live worker";
  for (;;) {
    const auto order = ranked(tried);
    if (order.empty()) {
      raise(ErrorKind::overloaded, "every worker is full or unreachable (", last_error, ")");
    }
    const std::size_t i = order.front();
    tried.push_back(i);
    {
      std::lock_guard lock(mutex_);
      ++workers_[i]->in_flight;
    }
    bool delivered = false;
    std::vector<bool> stopped(static_cast<std::size_t>(request.n), false);
    try {
      worker::WorkerClient client(context_, workers_[i]->endpoint, options_.dead_after);
      worker::StreamCallbacks cb;
      cb.on_queued = callbacks.on_queued;
      cb.on_step = [&](const worker::JobStep& step) {
        for (const auto& p : step.prompts) {
          if (!callbacks.on_prompt || stopped[static_cast<std::size_t>(p.index)]) continue;
          std::vector<TokenEvent> events;
          events.reserve(p.tokens.size());
          for (const auto& t : p.tokens) events.push_back(token_event(t));
          callbacks.on_prompt(p.index, events);
        }
        for (const auto& t : step.tokens) {
          const auto index = static_cast<std::size_t>(t.index);
          if (stopped[index]) continue;
          delivered = true;
          if (callbacks.on_token && !callbacks.on_token(token_event(t))) {
            stopped[index] = true;
            // The last sequence stopping (or a client gone) cancels the whole request.
            const bool all = std::all_of(stopped.begin(), stopped.end(), [](bool b) { return b; });
            client.stop(all ? -1 : t.index);
          }
        }
        for (const auto& [index, why] : step.finished) {
          if (stopped[static_cast<std::size_t>(index)] || why == worker::Finish::cancelled)
            continue;
          if (callbacks.on_finish) {
            callbacks.on_finish(
                index, why == worker::Finish::stop ? FinishReason::stop : FinishReason::length);
          }
        }
      };
      client.generate(remote, cb);
      std::lock_guard lock(mutex_);
      --workers_[i]->in_flight;
      return;
    } catch (const Error& e) {
      {
        std::lock_guard lock(mutex_);
        --workers_[i]->in_flight;
      }
      // Retried elsewhere only when nothing reached the client and another worker could do it.
      if (delivered || e.kind() == ErrorKind::failed || e.kind() == ErrorKind::unimplemented) throw;
      log::info("request passed over worker ", workers_[i]->endpoint, ": ", e.what());
      last_error = e.what();
    }
  }
}

}  // namespace kvpr::gateway
