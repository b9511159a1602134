// `kvpr bench`'s check of its own profile: the measured points against their predictions; past
// --drift-margin the profile is refitted from them (planner/drift_monitor.h), written back to the
// cache when it came from there, and the split decided again.
#include <cmath>
#include <cstdio>

#include "bench.h"
#include "kvpr/worker/profiler.h"
#include "planning.h"

namespace kvpr::cli::bench {

Drift check_drift(Bench& bench, const planner::Decision& decision, const Results& r) {
  const ModelConfig& c = bench.checkpoint.config();
  std::vector<planner::ObservedStep> steps;
  for (const auto* set : {&r.points, &r.sweep}) {
    for (const auto& m : *set) {
      planner::ObservedStep step{worker::step_shape(c, bench.store->shape().block_tokens), {}};
      step.shape.s = bench.s;
      step.shape.l = m.l;
      step.shape.chunk = std::max<std::int64_t>(m.chunk, 1);
      step.shape.resident = m.policy == "resident";
      const auto& t = m.phases;
      step.measured = {m.measured_s, t.transfer, t.recompute, t.attention, t.other, t.idle};
      steps.push_back(std::move(step));
    }
  }
  Drift d;
  d.ratio = planner::drift_ratio(bench.profile, steps);
  const double margin = bench.options.drift_margin;
  if (margin <= 0 || std::abs(d.ratio - 1) <= margin) return d;
  d.refit = planner::refit_profile(bench.profile, steps);
  bench.note(str("profile drift: the points took ", d.ratio, "x their predicted time; refitted"));
  bench.planner->update_profile(d.refit->profile);
  for (const auto& step : steps) {
    d.predicted_after_s.push_back(planner::predict_step(d.refit->profile, step.shape).total_s);
  }
  if (bench.options.profile.empty()) {  // it came from the cache: the next run starts right
    const auto path = worker::profile_cache_path(d.refit->profile.fingerprint);
    save_profile(d.refit->profile, path);
    d.cached_to = path.string();
  }
  d.decision = bench.planner->decide(bench.s);
  const auto& now = d.decision->plan;
  if (now.ratio != decision.plan.ratio || now.chunk != decision.plan.chunk) {
    d.rechosen = bench.measure(std::string(planner::to_string(now.policy)), "chosen after refit",
                               now.ratio, now.chunk);
  }
  return d;
}

nlohmann::json drift_json(const Drift& d, const Results& r, double margin) {
  nlohmann::json out = {{"margin", margin},
                        {"ratio", d.ratio},
                        {"refitted", d.refit.has_value()},
                        {"cached_to", d.cached_to}};
  if (!d.refit) return out;
  const auto& f = *d.refit;
  out["ratio_after_refit"] = f.ratio_after;
  out["scales"] = {{"transfer", f.transfer_scale},
                   {"recompute", f.recompute_scale},
                   {"attention", f.attention_scale},
                   {"other", f.other_scale},
                   {"residual_s", f.residual_s}};
  double worst = 0;
  std::size_t i = 0;
  for (const auto* set : {&r.points, &r.sweep}) {
    for (const auto& m : *set)
      worst = std::max(worst, std::abs(d.predicted_after_s[i++] / m.measured_s - 1));
  }
  out["predicted_after_refit_s"] = d.predicted_after_s;
  out["worst_prediction_error_after_refit"] = worst;
  out["chosen_after_refit"] = {{"policy", std::string(planner::to_string(d.decision->plan.policy))},
                               {"ratio", d.decision->plan.ratio},
                               {"chunk", d.decision->plan.chunk},
                               {"predicted_s", d.decision->plan.predicted_step_s},
                               {"reason", d.decision->plan.reason},
                               {"same_as_before", !d.rechosen.has_value()}};
  const Measured& now = d.rechosen ? *d.rechosen : *r.chosen;
  out["chosen_after_refit"]["measured_s"] = now.measured_s;
  out["chosen_after_refit_vs_best"] = now.measured_s / r.best->measured_s;
  return out;
}

void print_drift(const nlohmann::json& d) {
  if (!d["refitted"].get<bool>()) {
    std::printf("profile: the points took %.3fx their predicted time (margin %.2f): kept\n",
                d["ratio"].get<double>(), d["margin"].get<double>());
    return;
  }
  const auto& after = d["chosen_after_refit"];
  std::printf(
      "profile drift: the points took %.3fx their predicted time; refitted (now %.3fx, worst "
      "error %.1f%%)%s\nchosen after refit: %s; measured %.3f ms, %.3f of the best\n",
      d["ratio"].get<double>(), d["ratio_after_refit"].get<double>(),
      100 * d["worst_prediction_error_after_refit"].get<double>(),
      d["cached_to"].get<std::string>().empty()
          ? ""
          : str("; cached to ", d["cached_to"].get<std::string>()).c_str(),
      after["reason"].get<std::string>().c_str(), 1e3 * after["measured_s"].get<double>(),
      d["chosen_after_refit_vs_best"].get<double>());
}

}  // namespace kvpr::cli::bench
