#include <algorithm>

#include "kvpr/common/error.h"
#include "kvpr/planner/planner.h"

namespace kvpr::planner {

std::string_view to_string(Policy policy) {
  switch (policy) {
    case Policy::resident:
      return "resident";
    case Policy::transfer:
      return "transfer";
    case Policy::recompute:
      return "recompute";
    case Policy::kvpr:
      return "kvpr";
  }
  return "?";
}

Policy parse_policy(std::string_view name) {
  for (Policy p : {Policy::resident, Policy::transfer, Policy::recompute, Policy::kvpr}) {
    if (to_string(p) == name) return p;
  }
  fail("unknown policy '", name, "' (expected resident, transfer, recompute or kvpr)");
}

Plan CostModelPlanner::plan(const PlanRequest& request) {
  Plan plan;
  plan.policy = request.policy;
  plan.chunk = chunk_;
  const auto& s = request.s;
  switch (request.policy) {
    case Policy::resident:
    case Policy::transfer:
      plan.l.assign(s.size(), 0);
      plan.reason = str("policy ", to_string(request.policy), " recomputes nothing");
      break;
    case Policy::recompute:
      plan.l = s;
      plan.ratio = 1;
      plan.reason = "policy recompute rebuilds every K,V from activations";
      break;
    case Policy::kvpr:
      if (request.split) {
        plan.l.resize(s.size());
        for (std::size_t i = 0; i < s.size(); ++i)
          plan.l[i] = std::clamp<std::int64_t>(*request.split, 0, s[i]);
        plan.reason = str("fixed split l = ", *request.split, " (clamped to each context length)");
      } else {
        auto choice = choose_split(request.shape, s, request.rates, chunk_);
        plan.ratio = choice.ratio;
        plan.l = std::move(choice.l);
        plan.reason = std::move(choice.reason);
      }
      break;
  }
  if (request.host_split && request.policy != Policy::resident) {
    plan.m.resize(s.size());
    for (std::size_t i = 0; i < s.size(); ++i)
      plan.m[i] = std::clamp<std::int64_t>(*request.host_split, plan.l[i], s[i]);
    plan.reason += str("; tokens from m = ", *request.host_split, " on attended on the host");
  }
  if (request.policy != Policy::resident) {
    const auto cost = layer_cost(request.shape, s, plan.l, request.rates, chunk_);
    plan.predicted_step_s = static_cast<double>(request.n_layers) *
                            (request.policy == Policy::kvpr ? cost.pipelined_s : cost.paper_s);
  }
  return plan;
}

}  // namespace kvpr::planner
