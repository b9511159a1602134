#include "kvpr/planner/planner_service.h"

#include <capnp/message.h>

#include <chrono>
#include <numeric>

#include "kvpr/common/log.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/service.h"
#include "kvpr/net/wire.h"
#include "planner_wire.h"

namespace kvpr::planner {
namespace {

using std::chrono::milliseconds;

// The profile scheduler replays every layer of a step for each of ~160 candidate schedules; a
// request whose replay visits more store blocks than this is planned by the cost model instead.
constexpr std::int64_t kMaxScheduledBlocks = std::int64_t{1} << 24;

bool same_curve(const Curve& a, const Curve& b) {
  return a.x == b.x && a.y == b.y;
}

bool same_profile(const HardwareProfile& a, const HardwareProfile& b) {
  return a.fingerprint == b.fingerprint && a.backend == b.backend && a.h == b.h &&
         a.h_kv == b.h_kv && a.n_heads == b.n_heads && a.head_dim == b.head_dim && a.ffn == b.ffn &&
         same_curve(a.h2d_bytes_per_s, b.h2d_bytes_per_s) &&
         same_curve(a.d2h_bytes_per_s, b.d2h_bytes_per_s) &&
         same_curve(a.recompute_flops_per_s, b.recompute_flops_per_s) &&
         a.attention_s_per_token == b.attention_s_per_token &&
         a.attention_s_per_query == b.attention_s_per_query &&
         a.other_s_per_layer == b.other_s_per_layer && a.other_s_per_row == b.other_s_per_row &&
         a.vocab == b.vocab && a.head_s == b.head_s && a.head_s_per_row == b.head_s_per_row;
}

std::vector<std::int64_t> shape_key(const StepShape& m) {
  return {m.n_layers, m.h, m.h_kv, m.ffn, m.gated_ffn ? 1 : 0, m.p, m.block_tokens};
}

}  // namespace

struct PlannerService::Instruments {
  explicit Instruments(prometheus::Registry& registry)
      : plan_requests(prometheus::BuildCounter()
                          .Name("kvpr_plan_requests_total")
                          .Help("Plan requests received")
                          .Register(registry)
                          .Add({})),
        plan_latency(prometheus::BuildHistogram()
                         .Name("kvpr_plan_latency_seconds")
                         .Help("Time from a plan request's arrival to its reply")
                         .Register(registry)
                         .Add({}, net::latency_buckets())),
        profiles(prometheus::BuildGauge()
                     .Name("kvpr_planner_profiles")
                     .Help("Hardware profiles this replica holds")
                     .Register(registry)
                     .Add({})),
        profile_reports(prometheus::BuildCounter()
                            .Name("kvpr_profile_reports_total")
                            .Help("Hardware profiles reported to this replica")
                            .Register(registry)
                            .Add({})),
        split_ratio(prometheus::BuildGauge()
                        .Name("kvpr_planner_split_ratio")
                        .Help("Share of the context recomputed by the last plan, sum(l)/sum(s)")
                        .Register(registry)
                        .Add({})) {}

  prometheus::Counter& plan_requests;
  prometheus::Histogram& plan_latency;
  prometheus::Gauge& profiles;
  prometheus::Counter& profile_reports;
  prometheus::Gauge& split_ratio;
};

PlannerService::PlannerService(zmq::context_t& context, PlannerServiceOptions options)
    : context_(context),
      options_(std::move(options)),
      metrics_(std::make_unique<net::Metrics>(options_.metrics_port, options_.metrics_host)),
      instruments_(std::make_unique<Instruments>(metrics_->registry())) {}

PlannerService::~PlannerService() {
  try {
    stop();
  } catch (const std::exception& e) {  // a destructor logs and never throws
    log::error("planner ", options_.name, ": while stopping: ", e.what());
  }
}

void PlannerService::start() {
  if (router_) fail("planner service '", options_.name, "' is already started");
  router_ = std::make_unique<net::Router>(context_, options_.endpoint, [this] {
    rejected_.fetch_add(1);
    metrics_->rejected("unauthenticated").Increment();
  });
  endpoint_ = router_->endpoint();
  stopping_.store(false);
  thread_ = std::thread([this] { serve(); });
}

void PlannerService::stop() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
  if (router_) {
    // The drained replies may still sit in ZeroMQ's queues: give them a moment to leave after
    // the socket closes (the context's termination waits at most this long for them).
    router_->socket().set(zmq::sockopt::linger, 500);
    router_.reset();
  }
}

int PlannerService::metrics_port() const {
  return metrics_->port();
}

prometheus::Registry& PlannerService::registry() {
  return metrics_->registry();
}

PlannerServiceStats PlannerService::stats() const {
  PlannerServiceStats s;
  s.plan_requests = plan_requests_.load();
  s.profile_reports = profile_reports_.load();
  s.rejected_messages = rejected_.load();
  std::lock_guard lock(mutex_);
  s.profiles = profiles_.size();
  return s;
}

void PlannerService::serve() {
  net::ServeLoop loop;
  loop.name = "planner " + options_.name;
  loop.poll = milliseconds(100);
  loop.stopping = [this] { return stopping_.load(); };
  loop.answer = [this](net::Router::Request& request) {
    return request.malformed.empty() ? handle(request.payload.data(), request.payload.size())
                                     : reject_frames(request.malformed);
  };
  net::serve(*router_, loop);
}

zmq::message_t PlannerService::reject(std::uint64_t id, const Error& error,
                                      const std::string& reason) {
  rejected_.fetch_add(1);
  metrics_->rejected(reason).Increment();
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::PlannerReply>();
  reply.setId(id);
  net::set_error(reply.initError(), error);
  return net::encode(message);
}

zmq::message_t PlannerService::reject_frames(const std::string& why) {
  return reject(0, net::MalformedMessage(why), "malformed");
}

zmq::message_t PlannerService::handle(const void* data, std::size_t size) {
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t id = 0;
  bool is_plan = false;
  std::string reason = "malformed";  // what a failure at this point means
  try {
    try {
      net::Frame frame(data, size);
      wire::PlannerRequest::Reader request;
      wire::PlannerRequest::Which which{};
      std::uint64_t deadline = 0;
      net::decode_guard([&] {
        request = frame.root<wire::PlannerRequest>();
        id = request.getId();
        deadline = request.getDeadlineUnixMs();
        which = request.which();
      });
      if (which == wire::PlannerRequest::PLAN) {
        is_plan = true;
        plan_requests_.fetch_add(1);
        instruments_->plan_requests.Increment();
      }
      if (deadline != 0 && deadline < net::now_unix_ms()) {
        reason = "expired";
        raise(ErrorKind::disconnected, "request ", id, " expired ", net::now_unix_ms() - deadline,
              " ms before the planner read it");
      }
      reason = "invalid";
      switch (which) {
        case wire::PlannerRequest::PLAN: {
          wire_adapter::DecodedPlanRequest decoded;
          net::decode_guard(
              [&] { decoded = wire_adapter::decode_plan_request(request.getPlan()); });
          auto reply = serve_plan(id, decoded);
          instruments_->plan_latency.Observe(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          return reply;
        }
        case wire::PlannerRequest::REPORT: {
          HardwareProfile profile;
          net::decode_guard([&] { profile = wire_adapter::decode_profile(request.getReport()); });
          return serve_report(id, std::move(profile));
        }
        case wire::PlannerRequest::STATS:
          return serve_stats(id);
      }
      reason = "unknown_type";
      raise(ErrorKind::unimplemented, "request ", id, " has an unknown type (union member ",
            static_cast<unsigned>(which), "): this planner knows plan, report and stats");
    } catch (const Error& e) {
      std::string label = reason;
      if (dynamic_cast<const net::MalformedMessage*>(&e) != nullptr) {
        label = "malformed";
      } else if (e.kind() == ErrorKind::overloaded) {
        label = "overloaded";
      }
      auto reply = reject(id, e, label);
      if (is_plan) {
        instruments_->plan_latency.Observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      return reply;
    }
  } catch (const std::exception& e) {  // not kvpr's own error: a bug or out of memory
    return reject(id, Error(ErrorKind::failed, str("planner internal error: ", e.what())),
                  "internal");
  }
}

std::shared_ptr<ProfilePlanner> PlannerService::scheduler(const std::string& fingerprint,
                                                          const StepShape& model) {
  if (fingerprint.empty()) return nullptr;
  std::lock_guard lock(mutex_);
  const auto profile = profiles_.find(fingerprint);
  if (profile == profiles_.end()) return nullptr;
  SchedulerKey key{fingerprint, shape_key(model)};
  auto it = schedulers_.find(key);
  if (it == schedulers_.end()) {
    // Fails (the request is answered with the reason) when the profile was measured for another
    // h or h_kv than the model's.
    auto made = std::make_shared<ProfilePlanner>(*profile->second, model, options_.bucket);
    if (schedulers_.size() >= options_.max_schedulers) schedulers_.erase(schedulers_.begin());
    it = schedulers_.emplace(std::move(key), std::move(made)).first;
  }
  return it->second;
}

zmq::message_t PlannerService::serve_plan(std::uint64_t id,
                                          const wire_adapter::DecodedPlanRequest& decoded) {
  const PlanRequest& request = decoded.request;
  auto profile_planner = scheduler(decoded.fingerprint, decoded.model);
  if (profile_planner) {
    std::int64_t blocks = 0;
    for (auto si : request.s)
      blocks += (si + decoded.model.block_tokens - 1) / decoded.model.block_tokens;
    if (blocks * decoded.model.n_layers > kMaxScheduledBlocks) {
      fail("plan request too large for the profile scheduler: ", decoded.model.n_layers,
           " layers × ", blocks, " store blocks (at most ", kMaxScheduledBlocks, ")");
    }
  } else if (request.policy != Policy::resident &&
             (request.rates.bytes_per_s <= 0 || request.rates.flops_per_s <= 0)) {
    fail("no profile '", decoded.fingerprint,
         "' on this replica and no rates to plan with (bytesPerS = ", request.rates.bytes_per_s,
         ", flopsPerS = ", request.rates.flops_per_s, ")");
  }
  const Plan plan =
      profile_planner ? profile_planner->plan(request) : CostModelPlanner().plan(request);
  const auto l_sum = std::accumulate(plan.l.begin(), plan.l.end(), std::int64_t{0});
  const auto s_sum = std::accumulate(request.s.begin(), request.s.end(), std::int64_t{0});
  instruments_->split_ratio.Set(s_sum > 0 ? static_cast<double>(l_sum) / static_cast<double>(s_sum)
                                          : 0.0);

  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::PlannerReply>();
  reply.setId(id);
  wire_adapter::encode_plan(plan, profile_planner ? decoded.fingerprint : std::string(),
                            reply.initPlan());
  return net::encode(message);
}

zmq::message_t PlannerService::serve_report(std::uint64_t id, HardwareProfile profile) {
  std::size_t held = 0;
  {
    std::lock_guard lock(mutex_);
    auto it = profiles_.find(profile.fingerprint);
    if (it == profiles_.end()) {
      if (profiles_.size() >= options_.max_profiles) {
        raise(ErrorKind::overloaded, "planner '", options_.name, "' holds ", profiles_.size(),
              " profiles, its limit: profile '", profile.fingerprint, "' not stored");
      }
      const std::string fingerprint = profile.fingerprint;
      profiles_.emplace(fingerprint, std::make_shared<const HardwareProfile>(std::move(profile)));
    } else if (!same_profile(*it->second, profile)) {
      // A new measurement: schedulers made from the old one go, with their cached plans.
      for (auto s = schedulers_.begin(); s != schedulers_.end();) {
        s = s->first.first == profile.fingerprint ? schedulers_.erase(s) : std::next(s);
      }
      it->second = std::make_shared<const HardwareProfile>(std::move(profile));
    }
    held = profiles_.size();
  }
  profile_reports_.fetch_add(1);
  instruments_->profile_reports.Increment();
  instruments_->profiles.Set(static_cast<double>(held));

  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::PlannerReply>();
  reply.setId(id);
  reply.setOk();
  return net::encode(message);
}

zmq::message_t PlannerService::serve_stats(std::uint64_t id) {
  const auto s = stats();
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::PlannerReply>();
  reply.setId(id);
  auto out = reply.initStats();
  out.setPlanRequests(s.plan_requests);
  out.setProfiles(s.profiles);
  out.setRejectedMessages(s.rejected_messages);
  return net::encode(message);
}

}  // namespace kvpr::planner
