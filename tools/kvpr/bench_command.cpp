// `kvpr bench`: real decode steps for every policy and, with --sweep, for splits l across [0, s],
// each beside the step model's prediction and the whole-step lower bound; the scheduler's choice,
// the best measured point, the pipelined schedule against the paper's and against the lower bound,
// as ratios measured in one run. Every measurement starts from the same stored context: after each
// step the sequences are truncated back to s tokens. A cached profile is not trusted blindly: when
// the measured points drift from their predictions past --drift-margin, the profile is refitted
// from them (planner/drift_monitor.h), written back to the cache, and the split decided again.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>

#include "bench.h"
#include "kvpr/plot/plot.h"
#include "planning.h"

namespace kvpr::cli {
namespace {

using bench::Bench;
using bench::check_drift;
using bench::Drift;
using bench::drift_json;
using bench::measure_all;
using bench::Measured;
using bench::print_drift;
using bench::Results;

nlohmann::json measured_json(const Measured& m) {
  return {{"policy", m.policy},
          {"label", m.label},
          {"split", m.l.empty() ? 0 : m.l.front()},
          {"splits", m.l},
          {"ratio", m.ratio},
          {"chunk", m.chunk},
          {"measured_s", m.measured_s},
          {"predicted_s", m.predicted_s},
          {"prediction_error", m.predicted_s / m.measured_s - 1},
          {"step_lower_bound_s", m.step_lower_bound_s},
          {"over_step_lower_bound", m.measured_s / m.step_lower_bound_s},
          {"measured_phases_s",
           {{"transfer", m.phases.transfer},
            {"recompute", m.phases.recompute},
            {"attention", m.phases.attention},
            {"other", m.phases.other},
            {"idle", m.phases.idle},
            {"total", m.phases.total}}}};
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

nlohmann::json results_json(const Bench& bench, const planner::Decision& decision,
                            const Results& r) {
  const auto& o = bench.options;
  const ModelConfig& c = bench.checkpoint.config();
  nlohmann::json out;
  out["date"] = now_utc();
  out["machine"] = bench.profile.description;
  out["settings"] = {{"model", o.model},
                     {"arch", std::string(to_string(c.arch))},
                     {"layers", c.n_layers},
                     {"h", c.h},
                     {"h_kv", c.h_kv()},
                     {"dtype", std::string(torch_name(c.dtype))},
                     {"batch", o.batch},
                     {"context", o.context},
                     {"steps", o.steps},
                     {"backend", o.backend.backend},
                     {"emulate_link_gbps", o.backend.emulate_link_gbps},
                     {"emulate_link_latency_us", o.backend.emulate_link_latency_us}};
  const double B = bench.profile.h2d_bytes_per_s.y.back();
  const double F = bench.profile.recompute_flops_per_s.y.back();
  out["rates"] = {{"h2d_bytes_per_s", B}, {"recompute_flops_per_s", F}, {"flops_per_byte", F / B}};
  nlohmann::json all = nlohmann::json::array();
  double worst_error = 0;
  for (const auto* set : {&r.points, &r.sweep}) {
    for (const auto& m : *set) {
      all.push_back(measured_json(m));
      worst_error = std::max(worst_error, std::abs(m.predicted_s / m.measured_s - 1));
    }
  }
  out["points"] = all;
  out["chosen"] = measured_json(*r.chosen);
  out["chosen"]["reason"] = decision.plan.reason;
  out["best"] = measured_json(*r.best);
  out["chosen_vs_best"] = r.chosen_vs_best;
  out["chosen_vs_best_sweep"] = r.chosen_vs_best_sweep;
  out["confirmation"] = r.confirmation;
  out["worst_prediction_error"] = worst_error;
  const double resident_s = r.points.front().measured_s;
  const double transfer_s = r.points[1].measured_s;
  const double lb = decision.lower_bound_s;
  out["lower_bound_kv_s"] = lb;
  out["kv_load_s"] = {{"chosen_pipelined", r.chosen->measured_s - resident_s},
                      {"chosen_paper", r.paper->measured_s - resident_s},
                      {"transfer", transfer_s - resident_s}};
  out["ratios"] = {
      {"pipelined_over_paper", r.chosen->measured_s / r.paper->measured_s},
      {"pipelined_kv_load_over_lower_bound", (r.chosen->measured_s - resident_s) / lb},
      {"transfer_over_pipelined", transfer_s / r.chosen->measured_s},
      {"chosen_over_step_lower_bound", r.chosen->measured_s / r.chosen->step_lower_bound_s}};
  return out;
}

void print_results(const nlohmann::json& out, const planner::Decision& decision, const Results& r) {
  std::printf("%-32s %8s %6s %12s %12s %8s %8s\n", "point", "l", "chunk", "measured ms",
              "predicted ms", "error", "step/LB");
  for (const auto& j : out["points"]) {
    const auto chunk = j["chunk"].get<std::int64_t>();
    std::printf(
        "%-32s %8lld %6s %12.3f %12.3f %+7.1f%% %8.3f\n", j["label"].get<std::string>().c_str(),
        static_cast<long long>(j["split"].get<std::int64_t>()),
        chunk >= planner::kPaperChunk ? "all" : std::to_string(chunk).c_str(),
        1e3 * j["measured_s"].get<double>(), 1e3 * j["predicted_s"].get<double>(),
        100 * j["prediction_error"].get<double>(), j["over_step_lower_bound"].get<double>());
  }
  std::printf("chosen: %s\n", decision.plan.reason.c_str());
  std::printf(
      "chosen measured %.3f ms; best measured %.3f ms (%s): chosen/best = %.3f in the sweep, %.3f "
      "measured side by side; worst prediction error %.1f%%\n",
      1e3 * r.chosen->measured_s, 1e3 * r.best->measured_s, r.best->label.c_str(),
      r.chosen_vs_best_sweep, r.chosen_vs_best, 100 * out["worst_prediction_error"].get<double>());
  const auto& ratios = out["ratios"];
  std::printf(
      "pipelined/paper = %.3f; transfer/pipelined = %.3f; pipelined KV load / LB = %.3f (LB %.3f "
      "ms); chosen step / whole-step LB = %.3f\n",
      ratios["pipelined_over_paper"].get<double>(), ratios["transfer_over_pipelined"].get<double>(),
      ratios["pipelined_kv_load_over_lower_bound"].get<double>(),
      1e3 * out["lower_bound_kv_s"].get<double>(),
      ratios["chosen_over_step_lower_bound"].get<double>());
}

void write_plot(const Bench& bench, const Results& r) {
  const auto& o = bench.options;
  const ModelConfig& c = bench.checkpoint.config();
  plot::Chart chart;
  chart.title = str(
      "decode step vs split l: ", to_string(c.arch), " h=", c.h, ", b=", o.batch, ", s=", o.context,
      ", ", o.backend.backend,
      o.backend.emulate_link_gbps > 0 ? str(" link ", o.backend.emulate_link_gbps, " GB/s") : "");
  chart.x_label = "l (tokens recomputed from activations)";
  chart.y_label = "step time (ms)";
  plot::Series measured{"measured", {}, {}, 0x1f77b4, true, false};
  plot::Series predicted{"predicted", {}, {}, 0xff7f0e, true, true};
  const auto& curve_points = r.sweep.empty() ? r.points : r.sweep;
  std::vector<const Measured*> sorted;
  for (const auto& m : curve_points) {
    if (m.policy != "resident") sorted.push_back(&m);
  }
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->ratio < b->ratio; });
  for (const auto* m : sorted) {
    measured.x.push_back(static_cast<double>(m->l.front()));
    measured.y.push_back(1e3 * m->measured_s);
    predicted.x.push_back(static_cast<double>(m->l.front()));
    predicted.y.push_back(1e3 * m->predicted_s);
  }
  chart.series = {measured, predicted};
  chart.markers = {
      {static_cast<double>(r.chosen->l.front()), 1e3 * r.chosen->measured_s, "chosen", 0xd62728},
      {static_cast<double>(r.best->l.front()), 1e3 * r.best->measured_s, "best", 0x2ca02c}};
  plot::write_png(chart, o.plot);
}

}  // namespace

int bench_command(const BenchOptions& options) {
  if (options.batch < 1 || options.context < 2) fail("--batch must be >= 1 and --context >= 2");
  if (options.points < 9 && options.sweep)
    fail("--points must be at least 9, got ", options.points);
  if (options.steps < 1) fail("--steps must be at least 1, got ", options.steps);
  Bench bench(options);
  const auto decision = bench.planner->decide(bench.s);
  const Results results = measure_all(bench, decision);
  const Drift drift = check_drift(bench, decision, results);
  auto out = results_json(bench, decision, results);
  out["drift"] = drift_json(drift, results, options.drift_margin);
  print_results(out, decision, results);
  print_drift(out["drift"]);
  if (!options.json.empty()) {
    std::ofstream f(options.json);
    if (!f) fail(options.json, ": cannot write");
    f << out.dump(1) << "\n";
  }
  if (!options.plot.empty()) write_plot(bench, results);
  if (bench.trace) bench.trace->write();
  for (auto seq : bench.seqs) bench.store->free(seq);
  return 0;
}

}  // namespace kvpr::cli
