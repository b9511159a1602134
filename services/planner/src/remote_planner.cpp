#include "kvpr/planner/remote_planner.h"

#include <capnp/message.h>

#include <algorithm>

#include "kvpr/common/error.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "planner_wire.h"

namespace kvpr::planner {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// How long a replica that failed is passed over while others remain.
constexpr auto kDownFor = std::chrono::seconds(3);

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& part : parts) out += (out.empty() ? "" : "; ") + part;
  return out;
}

}  // namespace

struct RemotePlanner::Replica {
  Replica(zmq::context_t& context, const std::string& endpoint)
      : client(context, endpoint, "planner " + endpoint) {}

  net::RpcClient client;
  // Guarded by RemotePlanner::mutex_.
  Clock::time_point down_until{};
  bool needs_profile = true;  // not known to hold the reported profile
  std::string last_failure;
};

RemotePlanner::RemotePlanner(zmq::context_t& context, std::vector<std::string> endpoints,
                             StepShape model, std::string fingerprint,
                             std::chrono::milliseconds timeout)
    : endpoints_(std::move(endpoints)),
      model_(std::move(model)),
      timeout_(timeout),
      fingerprint_(std::move(fingerprint)) {
  if (endpoints_.empty()) fail("remote planner: no planner endpoints given");
  if (timeout_.count() <= 0) fail("remote planner: timeout ", timeout_.count(), " ms is not > 0");
  for (const auto& endpoint : endpoints_) {
    replicas_.push_back(std::make_unique<Replica>(context, endpoint));
  }
}

RemotePlanner::~RemotePlanner() = default;

std::int64_t RemotePlanner::failovers() const {
  std::lock_guard lock(mutex_);
  return failovers_;
}

std::int64_t RemotePlanner::report_failures() const {
  std::lock_guard lock(mutex_);
  return report_failures_;
}

std::int64_t RemotePlanner::re_reports() const {
  std::lock_guard lock(mutex_);
  return re_reports_;
}

void RemotePlanner::order(std::vector<Replica*>& tried, std::vector<Replica*>& skipped) {
  const auto now = Clock::now();
  const std::size_t n = replicas_.size();
  const std::size_t first = next_++ % n;
  for (std::size_t i = 0; i < n; ++i) {
    Replica* replica = replicas_[(first + i) % n].get();
    (replica->down_until <= now ? tried : skipped).push_back(replica);
  }
  if (tried.empty()) {  // all marked down: try them all, the one back soonest first
    tried.swap(skipped);
    std::stable_sort(tried.begin(), tried.end(), [](const Replica* a, const Replica* b) {
      return a->down_until < b->down_until;
    });
  }
}

void RemotePlanner::mark_down(Replica& replica, const std::string& why) {
  std::lock_guard lock(mutex_);
  replica.down_until = Clock::now() + kDownFor;
  replica.needs_profile = true;
  replica.last_failure = why;
}

void RemotePlanner::mark_up(Replica& replica) {
  std::lock_guard lock(mutex_);
  replica.down_until = {};
}

bool RemotePlanner::send_profile(Replica& replica, const HardwareProfile& profile,
                                 Clock::time_point deadline, std::string& why) {
  const auto left = duration_cast<milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) {
    why = str(replica.client.peer(), ": no time left to send the profile");
    return false;
  }
  const std::uint64_t id = net::next_request_id();
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::PlannerRequest>();
  request.setId(id);
  request.setDeadlineUnixMs(net::deadline_unix_ms(left));
  wire_adapter::encode_profile(profile, request.initReport());
  std::unique_ptr<net::Frame> frame;
  try {
    frame = replica.client.call<wire::PlannerReply>(message, id, left);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::disconnected) throw;
    why = e.what();
    mark_down(replica, why);
    return false;
  }
  net::decode_guard([&] {
    const auto reply = frame->root<wire::PlannerReply>();
    if (reply.isError()) {
      const auto kind = net::from_wire(reply.getError().getKind());
      if (kind != ErrorKind::overloaded && kind != ErrorKind::disconnected) {
        net::throw_error(reply.getError(), replica.client.peer());
      }
      why = str(replica.client.peer(), ": ", reply.getError().getReason().cStr());
    } else if (!reply.isOk()) {
      fail(replica.client.peer(), ": unexpected reply to a profile report");
    }
  });
  if (!why.empty()) return false;
  std::lock_guard lock(mutex_);
  replica.needs_profile = false;
  return true;
}

std::optional<Plan> RemotePlanner::plan_on(Replica& replica, const PlanRequest& request,
                                           const std::string& fingerprint,
                                           const std::shared_ptr<const HardwareProfile>& profile,
                                           Clock::time_point deadline, std::string& why) {
  bool needs_profile = false;
  {
    std::lock_guard lock(mutex_);
    needs_profile = profile && replica.needs_profile;
  }
  for (int attempt = 0;; ++attempt) {
    if (needs_profile && !send_profile(replica, *profile, deadline, why)) return std::nullopt;
    const auto left = duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      why = str(replica.client.peer(), ": no time left to ask for a plan");
      return std::nullopt;
    }
    const std::uint64_t id = net::next_request_id();
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<wire::PlannerRequest>();
    root.setId(id);
    root.setDeadlineUnixMs(net::deadline_unix_ms(left));
    wire_adapter::encode_plan_request(request, model_, fingerprint, root.initPlan());
    std::unique_ptr<net::Frame> frame;
    try {
      frame = replica.client.call<wire::PlannerReply>(message, id, left);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::disconnected) throw;
      why = e.what();
      mark_down(replica, why);
      return std::nullopt;
    }
    std::optional<Plan> plan;
    std::string made_with;
    net::decode_guard([&] {
      const auto reply = frame->root<wire::PlannerReply>();
      if (reply.isError()) {
        const auto kind = net::from_wire(reply.getError().getKind());
        if (kind != ErrorKind::overloaded && kind != ErrorKind::disconnected) {
          net::throw_error(reply.getError(), replica.client.peer());
        }
        why = str(replica.client.peer(), ": ", reply.getError().getReason().cStr());
      } else if (reply.isPlan()) {
        plan = wire_adapter::decode_plan(reply.getPlan(), request.s);
        made_with = reply.getPlan().getFingerprint().cStr();
      } else {
        fail(replica.client.peer(), ": unexpected reply to a plan request");
      }
    });
    if (!plan) return std::nullopt;
    if (profile && made_with != profile->fingerprint && attempt == 0) {
      // The replica answered without our profile: it restarted since it stored it.
      std::lock_guard lock(mutex_);
      replica.needs_profile = true;
      needs_profile = true;
      ++re_reports_;
      continue;
    }
    mark_up(replica);
    return plan;
  }
}

Plan RemotePlanner::plan(const PlanRequest& request) {
  const auto deadline = Clock::now() + timeout_;
  std::vector<Replica*> tried, skipped;
  std::string fingerprint;
  std::shared_ptr<const HardwareProfile> profile;
  std::vector<std::string> failures;
  {
    std::lock_guard lock(mutex_);
    order(tried, skipped);
    fingerprint = fingerprint_;
    profile = profile_;
    for (const Replica* replica : skipped) {
      failures.push_back(
          str(replica->client.peer(), ": skipped, down after: ", replica->last_failure));
    }
  }
  for (std::size_t k = 0; k < tried.size(); ++k) {
    Replica& replica = *tried[k];
    const auto now = Clock::now();
    // Each replica left gets an equal share of the time left.
    const auto share = (deadline - now) / static_cast<long>(tried.size() - k);
    std::string why;
    if (auto plan = plan_on(replica, request, fingerprint, profile, now + share, why)) {
      return std::move(*plan);
    }
    failures.push_back(why);
    std::lock_guard lock(mutex_);
    ++failovers_;
  }
  raise(ErrorKind::disconnected, "planner: no replica gave a plan within ", timeout_.count(),
        " ms: ", join(failures));
}

std::size_t RemotePlanner::report(const HardwareProfile& profile) {
  {
    // What a replica would refuse is refused here, before it replaces the profile we hold.
    capnp::MallocMessageBuilder message;
    auto out = message.initRoot<wire::Profile>();
    wire_adapter::encode_profile(profile, out);
    wire_adapter::decode_profile(out.asReader());
  }
  auto shared = std::make_shared<const HardwareProfile>(profile);
  std::vector<Replica*> targets;
  const auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    profile_ = shared;
    fingerprint_ = profile.fingerprint;
    for (auto& replica : replicas_) {
      replica->needs_profile = true;
      if (replica->down_until <= now) {
        targets.push_back(replica.get());
      } else {
        ++report_failures_;
      }
    }
  }
  const auto deadline = now + timeout_;
  std::size_t stored = 0;
  for (std::size_t k = 0; k < targets.size(); ++k) {
    const auto at = Clock::now();
    const auto share = (deadline - at) / static_cast<long>(targets.size() - k);
    std::string why;
    if (send_profile(*targets[k], *shared, at + share, why)) {
      ++stored;
    } else {
      std::lock_guard lock(mutex_);
      ++report_failures_;
    }
  }
  return stored;
}

}  // namespace kvpr::planner
