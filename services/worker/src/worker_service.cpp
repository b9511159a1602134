#include "kvpr/worker/worker_service.h"

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/service.h"
#include "kvpr/net/wire.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/generator.h"
#include "kvpr/worker/trace.h"
#include "worker_metrics.h"
#include "worker_wire.h"

namespace kvpr::worker {

using net::Clock;
using wire_adapter::DecodedRequest;

struct WorkerService::Job {
  zmq::message_t peer;
  std::uint64_t id = 0;
  std::uint64_t deadline_unix_ms = 0;
  wire_adapter::GenerateJob work;
  Clock::time_point accepted_at;
  std::atomic<Clock::rep> last_event{0};  // for keep-alives, read by the router thread
};

namespace {

zmq::message_t copy(const zmq::message_t& m) {
  return {m.data(), m.size()};
}

std::string rejection_reason(const Error& e) {
  if (e.kind() == ErrorKind::unimplemented) return "unknown_type";
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
}

WorkerService::~WorkerService() {
  stop();
}

const std::string& WorkerService::endpoint() const {
  return router_->endpoint();
}
int WorkerService::metrics_port() const {
  return metrics_->port();
}

void WorkerService::start() {
  router_ = std::make_unique<net::Router>(context_, options_.endpoint);
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

zmq::message_t WorkerService::handle_request(const zmq::message_t& peer,
                                             const zmq::message_t& payload) {
  std::uint64_t id = 0;
  try {
    const wire_adapter::ModelLimits limits{model_.config().vocab, model_.config().max_positions};
    DecodedRequest request =
        wire_adapter::decode_request(payload.data(), payload.size(), limits, id);
    if (request.deadline_unix_ms != 0 && net::now_unix_ms() > request.deadline_unix_ms) {
      reject("expired");
      return error_event(
          id, Error(ErrorKind::failed, str("request ", id, " arrived past its deadline")));
    }
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(id);
    if (request.kind == DecodedRequest::Kind::stats) {
      std::lock_guard lock(mutex_);
      auto st = event.initStats();
      st.setName(options_.name);
      st.setQueued(queue_.size());
      st.setRunning(running_ != nullptr ? 1 : 0);
      st.setCompleted(completed_);
      st.setFailed(failed_);
      st.setRejectedMessages(rejected_);
      return net::encode(message);
    }
    std::size_t ahead = 0;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) raise(ErrorKind::overloaded, "worker ", options_.name, " is stopping");
      if (queue_.size() >= options_.max_queue) {
        raise(ErrorKind::overloaded, "worker ", options_.name, " has ", queue_.size(),
              " requests waiting (the limit)");
      }
      auto job = std::make_unique<Job>();
      job->peer = copy(peer);
      job->id = id;
      job->deadline_unix_ms = request.deadline_unix_ms;
      job->work = std::move(request.job);
      job->accepted_at = Clock::now();
      job->last_event = Clock::now().time_since_epoch().count();
      ahead = queue_.size() + (running_ != nullptr ? 1 : 0);
      queue_.push_back(std::move(job));
      instruments_->queue_depth->Set(static_cast<double>(queue_.size()));
    }
    wake_.notify_one();
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
    router_->send(peer, std::move(payload));
  }
}

void WorkerService::keep_alive() {
  std::lock_guard lock(mutex_);
  if (running_ == nullptr) return;
  const auto now = Clock::now();
  const auto last = Clock::time_point(Clock::duration(running_->last_event.load()));
  if (now - last < options_.keepalive) return;
  running_->last_event = now.time_since_epoch().count();
  capnp::MallocMessageBuilder message;
  auto event = message.initRoot<wire::WorkerEvent>();
  event.setId(running_->id);
  event.setWorking();
  router_->send(running_->peer, message);
}

// Serves until the executor has returned (stop() drains the queue first), then forwards the
// executor's last events and answers what has already arrived.
void WorkerService::route() {
  net::ServeLoop loop;
  loop.name = "worker " + options_.name;
  loop.poll = std::chrono::milliseconds(20);
  loop.also_wake.push_back(*events_in_);
  loop.tick = [this] {
    forward_events();  // first: they belong to work already accepted
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
}

void WorkerService::execute() {
  zmq::socket_t events = net::make_socket(context_, zmq::socket_type::push);
  events.connect(events_endpoint_);
  for (;;) {
    std::unique_ptr<Job> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to drain
      job = std::move(queue_.front());
      queue_.pop_front();
      running_ = job.get();
      instruments_->queue_depth->Set(static_cast<double>(queue_.size()));
    }
    const bool ok = run_job(*job, events);
    std::lock_guard lock(mutex_);
    running_ = nullptr;
    ++(ok ? completed_ : failed_);
  }
}

namespace {

void send(zmq::socket_t& events, const zmq::message_t& peer, capnp::MessageBuilder& message) {
  zmq::message_t id(peer.data(), peer.size());
  events.send(id, zmq::send_flags::sndmore);
  events.send(net::encode(message), zmq::send_flags::none);
}

}  // namespace

bool WorkerService::run_job(Job& job, zmq::socket_t& events) {
  auto& m = *instruments_;
  try {
    if (job.deadline_unix_ms != 0 && net::now_unix_ms() > job.deadline_unix_ms) {
      raise(ErrorKind::overloaded, "request ", job.id, " waited past its deadline");
    }
    if (options_.prepare) options_.prepare();
    EngineOptions engine_options{job.work.policy, job.work.split, trace_ != nullptr};
    engine_options.host_split = options_.host_split;
    engine_options.host_threads = options_.host_threads;
    Engine engine(model_, backend_, store_, planner_, engine_options);
    auto last = Clock::now();
    const bool keep = job.work.request.keep_logits;
    const auto result = generate(engine, job.work.request, [&](const StepEvent& ev) {
      const auto now = Clock::now();
      job.last_event = now.time_since_epoch().count();
      if (ev.step == 0) {
        m.time_to_first_token->Observe(
            std::chrono::duration<double>(now - job.accepted_at).count());
      } else {
        m.inter_token->Observe(std::chrono::duration<double>(now - last).count());
        m.observe_step(*ev.stats);
        if (options_.corrector) {
          m.observe_drift(*options_.corrector, options_.corrector->observe(*ev.stats));
        }
        if (trace_) trace_->add_step(*ev.stats, str("request ", job.id, " step ", ev.step));
      }
      last = now;
      m.tokens->Increment(static_cast<double>(ev.tokens.size()));
      capnp::MallocMessageBuilder message;
      auto event = message.initRoot<wire::WorkerEvent>();
      event.setId(job.id);
      auto t = event.initTokens();
      t.setStep(ev.step);
      auto tokens = t.initTokens(static_cast<unsigned>(ev.tokens.size()));
      for (unsigned i = 0; i < ev.tokens.size(); ++i) tokens.set(i, ev.tokens[i]);
      if (keep) {
        auto logits = t.initLogits(static_cast<unsigned>(ev.logits.size()));
        for (unsigned i = 0; i < ev.logits.size(); ++i) logits.set(i, ev.logits[i]);
      }
      send(events, job.peer, message);
    });
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(job.id);
    wire_adapter::set_summary(event.initDone(), result, options_.name);
    send(events, job.peer, message);
    m.requests_completed->Increment();
    return true;
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const Error*>(&e);
    const Error reply = error != nullptr ? *error : Error(ErrorKind::failed, e.what());
    log::warn(options_.name, ": request ", job.id, " failed: ", reply.what());
    capnp::MallocMessageBuilder message;
    auto event = message.initRoot<wire::WorkerEvent>();
    event.setId(job.id);
    net::set_error(event.initError(), reply);
    send(events, job.peer, message);
    m.requests_failed->Increment();
    return false;
  }
}

}  // namespace kvpr::worker
