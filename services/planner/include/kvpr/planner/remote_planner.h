// The planner seam implemented by planner service replicas (kvpr-planner) over ZeroMQ.
//
// plan() spreads requests over the replicas round-robin. A replica that does not answer in time,
// or cannot be reached, is marked down for a few seconds and the request goes to the next one;
// replicas marked down are tried only when no other is left. `timeout` bounds one plan() call as a
// whole, shared among the replicas it tries, so a call never outlives it by more than a poll
// interval: when every replica fails it throws Error(disconnected) naming each and why. An error
// reply (a request the planner refuses) is thrown as the replica's Error, without failing over,
// except `overloaded` and `disconnected` (the request expired before the replica read it), which
// try the next replica.
//
// report() sends the worker's profile to every replica it can reach and remembers it: a replica
// that was down, or that answers a plan without the profile (it restarted), is sent the profile
// again before it plans. Without a reported profile the constructor's fingerprint (if any) is
// sent, and replicas that do not know it plan with the request's rates.
//
// Thread-safe: replica state is guarded by a mutex; requests to one replica are serialised by its
// client. The zmq context must outlive the planner.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/common/profile.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::planner {

class RemotePlanner final : public Planner {
 public:
  // `model` supplies n_layers, h, h_kv, ffn, gated_ffn, p and block_tokens (a request's own
  // shape and n_layers take precedence where they are set). `fingerprint`: a profile the replicas
  // already hold (empty: none).
  RemotePlanner(zmq::context_t& context, std::vector<std::string> endpoints, StepShape model,
                std::string fingerprint = {},
                std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));
  ~RemotePlanner() override;
  RemotePlanner(const RemotePlanner&) = delete;
  RemotePlanner& operator=(const RemotePlanner&) = delete;

  Plan plan(const PlanRequest& request) override;

  // Sends `profile` to every replica not marked down, within `timeout` in all; returns how many
  // stored it. Replicas that did not are sent it before their next plan. An invalid profile is
  // refused (Error failed, naming the field) before anything is sent or replaced.
  std::size_t report(const HardwareProfile& profile);

  const std::vector<std::string>& endpoints() const { return endpoints_; }
  std::int64_t failovers() const;        // replica attempts that failed and moved on
  std::int64_t report_failures() const;  // replicas a report could not reach
  std::int64_t re_reports() const;       // profiles re-sent to a replica that had lost them

 private:
  struct Replica;
  using Clock = std::chrono::steady_clock;

  // Replicas to try, in order, and the ones skipped because they are marked down.
  void order(std::vector<Replica*>& tried, std::vector<Replica*>& skipped);
  // One replica's plan before `deadline`; nullopt (with `why`) when it cannot give one now.
  std::optional<Plan> plan_on(Replica& replica, const PlanRequest& request,
                              const std::string& fingerprint,
                              const std::shared_ptr<const HardwareProfile>& profile,
                              Clock::time_point deadline, std::string& why);
  // Sends the profile; false (with `why`) when the replica did not store it in time.
  bool send_profile(Replica& replica, const HardwareProfile& profile, Clock::time_point deadline,
                    std::string& why);
  void mark_down(Replica& replica, const std::string& why);
  void mark_up(Replica& replica);

  std::vector<std::string> endpoints_;
  StepShape model_;
  std::chrono::milliseconds timeout_;
  std::vector<std::unique_ptr<Replica>> replicas_;

  mutable std::mutex mutex_;  // guards what follows and the state fields of each Replica
  std::string fingerprint_;
  std::shared_ptr<const HardwareProfile> profile_;
  std::size_t next_ = 0;
  std::int64_t failovers_ = 0;
  std::int64_t report_failures_ = 0;
  std::int64_t re_reports_ = 0;
};

}  // namespace kvpr::planner
