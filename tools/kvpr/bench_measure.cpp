// `kvpr bench`: measuring every point, and the chosen one against the best.
#include <algorithm>

#include "bench.h"

namespace kvpr::cli::bench {

// The sweep's minimum is the least of many noisy measurements, biased low. When the best point is
// not the chosen one, both are measured again side by side, alternating, and the ratio is taken
// from those medians (the sweep's own ratio is kept in the JSON as well).
void compare_with_best(Bench& bench, Results& r) {
  r.best = r.chosen;
  for (const auto* set : {&r.points, &r.sweep}) {
    for (const auto& m : *set) {
      if (m.policy != "resident" && m.measured_s < r.best->measured_s) r.best = &m;
    }
  }
  r.chosen_vs_best_sweep = r.chosen->measured_s / r.best->measured_s;
  r.chosen_vs_best = r.chosen_vs_best_sweep;
  if (r.best == r.chosen || bench.options.confirm <= 0) return;
  std::vector<double> a;
  std::vector<double> b;
  for (std::int64_t round = 0; round < bench.options.confirm; ++round) {
    const auto& c = *r.chosen;
    const auto& best = *r.best;
    a.push_back(bench.measure(c.policy, "confirm chosen", c.ratio, c.chunk).measured_s);
    b.push_back(bench.measure(best.policy, "confirm best", best.ratio, best.chunk).measured_s);
  }
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  const double ma = a[(a.size() - 1) / 2];
  const double mb = b[(b.size() - 1) / 2];
  r.chosen_vs_best = ma / mb;
  r.confirmation = {
      {"rounds", bench.options.confirm}, {"chosen_s", a},       {"best_s", b},
      {"chosen_median_s", ma},           {"best_median_s", mb}, {"chosen_vs_best", ma / mb}};
}

Results measure_all(Bench& bench, const planner::Decision& decision) {
  Results r;
  r.points.reserve(5);
  r.points.push_back(bench.measure_resident());
  bench.prefill_shared();
  const std::int64_t chunk = decision.plan.chunk;
  r.points.push_back(bench.measure("transfer", "transfer", 0, chunk));
  r.points.push_back(bench.measure("recompute", "recompute", 1, chunk));
  r.points.push_back(bench.measure(std::string(planner::to_string(decision.plan.policy)), "chosen",
                                   decision.plan.ratio, chunk, true));
  r.points.push_back(bench.measure("kvpr", "chosen split, paper schedule", decision.plan.ratio,
                                   planner::kPaperChunk));
  r.chosen = &r.points[3];
  r.paper = &r.points[4];
  if (bench.options.sweep) {
    for (std::int64_t k = 0; k < bench.options.points; ++k) {
      const double ratio = static_cast<double>(k) / static_cast<double>(bench.options.points - 1);
      r.sweep.push_back(bench.measure("kvpr", str("sweep l/s=", ratio), ratio, chunk));
    }
  }
  compare_with_best(bench, r);
  return r;
}

}  // namespace kvpr::cli::bench
