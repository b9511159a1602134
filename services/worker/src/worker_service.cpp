#include "kvpr/worker/worker_service.h"

#include <cstring>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/service.h"
#include "kvpr/net/wire.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/generator.h"
#include "kvpr/worker/trace.h"
#include "worker_job.h"
#include "worker_metrics.h"
#include "worker_wire.h"

namespace kvpr::worker {

using net::Clock;
using wire_adapter::DecodedRequest;

namespace {

zmq::message_t copy(const zmq::message_t& m) {
  return {m.data(), m.size()};
}

std::string rejection_reason(const Error& e) {
  if (e.kind() == ErrorKind::unimplemented) return "unknown_type";
  if (e.kind() == ErrorKind::permission_denied) return "permission_denied";
  if (dynamic_cast<const net::MalformedMessage*>(&e) != nullptr) return "malformed";
  return "invalid";
}

zmq::message_t error_event(std::uint64_t id, const Error& e) {
  capnp::MallocMessageBuilder message;
  auto event = message.initRoot<wire::WorkerEvent>();
  event.setId(id);
  net::set_error(event.initError(), e);
  return net::encode(message);
}

}  // namespace

WorkerService::WorkerService(zmq::context_t& context, const DeviceModel& model,
                             kernels::Backend& backend, kvstore::KvStoreClient& store,
                             planner::Planner& planner, WorkerServiceOptions options)
    : context_(context),
      model_(model),
      backend_(backend),
      store_(store),
      planner_(planner),
      options_(std::move(options)) {
  if (!options_.trace_path.empty()) trace_ = std::make_unique<TraceWriter>(options_.trace_path);
  metrics_ = std::make_unique<net::Metrics>(options_.metrics_port, options_.metrics_host);
  instruments_ =
      std::make_unique<WorkerMetrics>(metrics_->registry(), options_.name, options_.model_name);
  instruments_->profile_h2d->Set(options_.link_bytes_per_s > 0
                                     ? options_.link_bytes_per_s
                                     : backend_.nominal_rates().h2d_bytes_per_s);
  if (options_.fallback != nullptr) {
    options_.fallback->on_fallback([c = instruments_->planner_fallbacks] { c->Increment(); });
  }
}

WorkerService::~WorkerService() {
  stop();
  if (options_.fallback != nullptr) options_.fallback->on_fallback({});  // the counter goes
}

const std::string& WorkerService::endpoint() const {
  return router_->endpoint();
}
int WorkerService::metrics_port() const {
  return metrics_->port();
}
prometheus::Registry& WorkerService::registry() {
  return metrics_->registry();
}

void WorkerService::start() {
  router_ = std::make_unique<net::Router>(
      context_, options_.endpoint, [this] { reject("unauthenticated"); }, options_.router_limits);
  events_endpoint_ = str("inproc://kvpr-worker-events-", static_cast<const void*>(this));
  events_in_ = std::make_unique<zmq::socket_t>(net::make_socket(context_, zmq::socket_type::pull));
  events_in_->bind(events_endpoint_);
  started_ = true;
  executor_thread_ = std::thread([this] { execute(); });
  router_thread_ = std::thread([this] { route(); });
}

void WorkerService::stop() {
  if (!started_) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (executor_thread_.joinable()) executor_thread_.join();
  {
    std::lock_guard lock(mutex_);
    executor_done_ = true;
  }
  if (router_thread_.joinable()) router_thread_.join();
  if (trace_) trace_->write();
  started_ = false;
}

void WorkerService::reject(const std::string& reason) {
  metrics_->rejected(reason).Increment();
  std::lock_guard lock(mutex_);
  ++rejected_;
}

zmq::message_t WorkerService::stats_event(std::uint64_t id) {
  capnp::MallocMessageBuilder message;
  auto event = message.initRoot<wire::WorkerEvent>();
  event.setId(id);
  auto st = event.initStats();
  std::lock_guard lock(mutex_);
  std::uint64_t running = 0;
  for (const auto& job : live_) running += job->batch->started ? 1 : 0;
  st.setName(options_.name);
  st.setQueued(live_.size() - running);
  st.setRunning(running);
  st.setCompleted(completed_);
  st.setFailed(failed_);
  st.setRejectedMessages(rejected_);
  st.setRunningSequences(running_seqs_);
  st.setWaitingSequences(waiting_seqs_);
  st.setMaxBatch(static_cast<std::uint64_t>(options_.batching.max_batch));
  st.setMaxQueue(options_.max_queue);
  st.setPreemptions(counters_.preemptions);
  st.setCancellations(counters_.cancellations);
  st.setKvFreeBytes(kv_free_bytes_);
  return net::encode(message);
}

// A cancel names a request by the id its client gave it; only the same client (routing id) can
// cancel it, so one client cannot stop another's work by guessing ids.
void WorkerService::cancel(const zmq::message_t& peer, std::uint64_t request, std::int64_t index) {
  std::lock_guard lock(mutex_);
  for (const auto& job : live_) {
    if (job->batch->id != request || job->peer.size() != peer.size() ||
        std::memcmp(job->peer.data(), peer.data(), peer.size()) != 0) {
      continue;
    }
    if (index < 0) {
      job->batch->cancelled = true;
    } else {
      job->batch->request_stop(index);
    }
  }
  wake_.notify_one();
}

zmq::message_t WorkerService::handle_request(const zmq::message_t& peer,
                                             const zmq::message_t& payload) {
  std::uint64_t id = 0;
  try {
    const wire_adapter::ModelLimits limits{model_.config().vocab, model_.config().max_positions};
    DecodedRequest request =
        wire_adapter::decode_request(payload.data(), payload.size(), limits, id);
    if (request.kind == DecodedRequest::Kind::cancel) {
      cancel(peer, request.cancel_request, request.cancel_index);
      return {};
    }
    if (request.deadline_unix_ms != 0 && net::now_unix_ms() > request.deadline_unix_ms) {
      reject("expired");
      return error_event(
          id, Error(ErrorKind::failed, str("request ", id, " arrived past its deadline")));
    }
    if (request.kind == DecodedRequest::Kind::stats) return stats_event(id);
    std::size_t ahead = 0;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) raise(ErrorKind::overloaded, "worker ", options_.name, " is stopping");
      std::size_t waiting = 0;
      for (const auto& job : live_) waiting += job->batch->started ? 0 : 1;
      if (waiting >= options_.max_queue) {
        raise(ErrorKind::overloaded, "worker ", options_.name, " has ", waiting,
              " requests waiting (the limit, --max-queue)");
      }
      auto job = std::make_shared<Job>();
      job->peer = copy(peer);
      job->batch = std::make_shared<BatchJob>();
      BatchJob& b = *job->batch;
      b.id = id;
      b.request = std::move(request.job.request);
      b.sampling = std::move(request.job.sampling);
      b.policy = request.job.policy;
      b.split = request.job.split;
      b.host_split = request.job.host_split;
      if (request.deadline_unix_ms != 0) {
        b.deadline = Clock::now() +
                     std::chrono::milliseconds(static_cast<std::int64_t>(request.deadline_unix_ms) -
                                               static_cast<std::int64_t>(net::now_unix_ms()));
      }
      job->last_event = Clock::now().time_since_epoch().count();
      ahead = waiting;
      inbox_.push_back(job);
      live_.push_back(std::move(job));
      instruments_->queue_depth->Set(static_cast<double>(waiting + 1));
    }
    wake_.notify_one();
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(id);
    event.setAccepted(ahead);
    return net::encode(message);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::overloaded) reject(rejection_reason(e));
    return error_event(id, e);
  }
}

// Moves every event the executor has queued ([peer, payload] on the inproc pipe) to its client.
void WorkerService::forward_events() {
  for (;;) {
    zmq::message_t peer;
    if (!events_in_->recv(peer, zmq::recv_flags::dontwait)) return;
    zmq::message_t payload;
    (void)events_in_->recv(payload, zmq::recv_flags::none);
    deliver(peer, std::move(payload));
  }
}

namespace {

constexpr std::size_t kMaxBacklog = 1024;                        // events held for a stalled client
constexpr std::size_t kMaxBacklogBytes = std::size_t{16} << 20;  // and their bytes

std::string key_of(const zmq::message_t& peer) {
  return {peer.data<char>(), peer.size()};
}

}  // namespace

void WorkerService::deliver(const zmq::message_t& peer, zmq::message_t payload) {
  const std::string key = key_of(peer);
  if (auto it = backlogs_.find(key); it != backlogs_.end()) {  // order: behind the waiting ones
    Backlog& b = it->second;
    b.bytes += payload.size();
    b.events.push_back(std::move(payload));
    if (b.events.size() > kMaxBacklog || b.bytes > kMaxBacklogBytes) abandon(key, false);
    return;
  }
  // Not taken now: queued, and tried again each tick. A "gone" peer is treated alike: ZeroMQ also
  // says so of a connection whose queue is waiting to be reopened by its reader, so only time
  // tells.
  if (router_->send(peer, payload) == net::Router::Sent::ok) return;
  backlogs_[key] = {{}, payload.size(), Clock::now()};
  backlogs_[key].events.push_back(std::move(payload));
}

void WorkerService::flush_backlogs() {
  const auto now = Clock::now();
  std::vector<std::pair<std::string, bool>> abandoned;
  for (auto it = backlogs_.begin(); it != backlogs_.end();) {
    Backlog& b = it->second;
    const zmq::message_t peer(it->first.data(), it->first.size());
    net::Router::Sent sent = net::Router::Sent::ok;
    while (!b.events.empty()) {
      const std::size_t size = b.events.front().size();
      sent = router_->send(peer, b.events.front());
      if (sent != net::Router::Sent::ok) break;
      b.bytes -= std::min(b.bytes, size);
      b.events.pop_front();
      b.since = now;  // it reads again
    }
    if (b.events.empty()) {
      it = backlogs_.erase(it);
      continue;
    }
    if (now - b.since >= options_.stalled_client) {
      abandoned.emplace_back(it->first, sent == net::Router::Sent::gone);
    }
    ++it;
  }
  for (const auto& [key, gone] : abandoned) abandon(key, gone);
}

void WorkerService::abandon(const std::string& peer, bool gone) {
  backlogs_.erase(peer);
  std::size_t n = 0;
  {
    std::lock_guard lock(mutex_);
    for (const auto& job : live_) {
      if (key_of(job->peer) != peer || job->batch->cancelled) continue;
      job->batch->cancelled = true;
      ++n;
    }
  }
  if (n == 0) return;
  wake_.notify_one();
  (gone ? instruments_->abandoned_gone : instruments_->abandoned_stalled)
      ->Increment(static_cast<double>(n));
  log::warn("worker ", options_.name, ": cancelled ", n, " request(s) of a client that ",
            gone ? "went away" : "stopped reading its events", "; their sequences are freed");
}

void WorkerService::keep_alive() {
  std::vector<std::pair<zmq::message_t, zmq::message_t>> pending;  // sent outside the lock
  std::unique_lock lock(mutex_);
  const auto now = Clock::now();
  std::uint64_t ahead = 0;
  for (const auto& job : live_) {
    const bool started = job->batch->started;
    const auto last = Clock::time_point(Clock::duration(job->last_event.load()));
    if (now - last >= options_.keepalive) {
      job->last_event = now.time_since_epoch().count();
      capnp::MallocMessageBuilder message;
      auto event = message.initRoot<wire::WorkerEvent>();
      event.setId(job->batch->id);
      if (started) {
        event.setWorking();
      } else {
        event.setQueued(ahead);
      }
      pending.emplace_back(copy(job->peer), net::encode(message));
    }
    if (!started) ++ahead;
  }
  lock.unlock();  // abandon() takes it
  for (auto& [peer, payload] : pending) deliver(peer, std::move(payload));
}

// Serves until the executor has returned (stop() drains the queue first), then forwards the
// executor's last events and answers what has already arrived.
void WorkerService::route() {
  net::ServeLoop loop;
  loop.name = "worker " + options_.name;
  loop.poll = std::chrono::milliseconds(20);
  loop.also_wake.push_back(*events_in_);
  loop.tick = [this] {
    flush_backlogs();  // first: the oldest events of clients that were full
    forward_events();  // then: they belong to work already accepted
    keep_alive();
  };
  loop.stopping = [this] {
    std::lock_guard lock(mutex_);
    return executor_done_;
  };
  loop.answer = [this](net::Router::Request& request) {
    if (request.malformed.empty()) return handle_request(request.peer, request.payload);
    reject("malformed");
    return error_event(0, net::MalformedMessage(request.malformed));
  };
  net::serve(*router_, loop);
  // Events still queued for slow clients go out before the socket closes (a stalled client is
  // given up after `stalled_client`, as while serving), and the socket lingers until they left.
  const auto deadline = Clock::now() + options_.stalled_client;
  while (!backlogs_.empty() && Clock::now() < deadline) {
    flush_backlogs();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  router_->socket().set(zmq::sockopt::linger, 1000);
}

}  // namespace kvpr::worker
