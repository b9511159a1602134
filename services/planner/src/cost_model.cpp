#include "kvpr/planner/cost_model.h"

#include <algorithm>
#include <cmath>

#include "kvpr/common/error.h"

namespace kvpr::planner {

LayerCost layer_cost(const LayerShape& shape, std::span<const std::int64_t> s,
                     std::span<const std::int64_t> l, const Rates& rates, std::int64_t chunk) {
  if (s.size() != l.size())
    fail("cost model: ", s.size(), " context lengths but ", l.size(), " splits");
  if (rates.bytes_per_s <= 0 || rates.flops_per_s <= 0) {
    fail("cost model: rates must be positive (B=", rates.bytes_per_s, ", F=", rates.flops_per_s,
         ")");
  }
  const auto h = static_cast<double>(shape.h);
  const auto h_kv = static_cast<double>(shape.h_kv);
  const auto p = static_cast<double>(shape.p);
  LayerCost c;
  double l_total = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto li = static_cast<double>(std::clamp<std::int64_t>(l[i], 0, s[i]));
    const auto si = static_cast<double>(s[i]);
    l_total += li;
    c.activation_bytes += li * h * p;
    c.kv_bytes += (si - li) * 2.0 * h_kv * p;
    c.recompute_flops += 4.0 * li * h * h_kv;
  }
  const double B = rates.bytes_per_s;
  const double F = rates.flops_per_s;
  c.transfer_s = (c.activation_bytes + c.kv_bytes) / B;
  c.recompute_s = c.recompute_flops / F;
  c.paper_s = c.activation_bytes / B + std::max(c.recompute_s, c.kv_bytes / B);
  // Pipeline fill: the first chunk must land before recompute starts, and the last chunk's
  // recompute runs after the link is idle.
  const double first = std::min<double>(static_cast<double>(chunk), l_total);
  const double fill = l_total > 0 ? first * h * p / B + 4.0 * first * h * h_kv / F : 0.0;
  c.pipelined_s = std::max(c.transfer_s, c.recompute_s) + fill;
  return c;
}

std::vector<std::int64_t> splits_for_ratio(std::span<const std::int64_t> s, double ratio) {
  std::vector<std::int64_t> l(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    l[i] = std::clamp<std::int64_t>(std::llround(ratio * static_cast<double>(s[i])), 0, s[i]);
  }
  return l;
}

std::vector<std::int64_t> host_splits_for_ratio(std::span<const std::int64_t> s,
                                                std::span<const std::int64_t> l,
                                                double host_ratio) {
  std::vector<std::int64_t> m(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const std::int64_t host = std::llround(host_ratio * static_cast<double>(s[i]));
    m[i] = std::clamp<std::int64_t>(s[i] - host, i < l.size() ? l[i] : 0, s[i]);
  }
  return m;
}

double lower_bound_s(const LayerShape& shape, std::span<const std::int64_t> s, const Rates& rates) {
  double best = 1e300;
  constexpr int kSteps = 256;
  for (int k = 0; k <= kSteps; ++k) {
    const auto l = splits_for_ratio(s, static_cast<double>(k) / kSteps);
    const auto c = layer_cost(shape, s, l, rates, 0);
    best = std::min(best, std::max(c.transfer_s, c.recompute_s));
  }
  return best;
}

SplitChoice choose_split(const LayerShape& shape, std::span<const std::int64_t> s,
                         const Rates& rates, std::int64_t chunk) {
  SplitChoice choice;
  choice.l = splits_for_ratio(s, 0.0);
  choice.cost = layer_cost(shape, s, choice.l, rates, chunk);
  if (shape.h >= 2 * shape.h_kv) {
    choice.reason =
        str("l = 0: an activation (h = ", shape.h, ") is not smaller than the K,V it ",
            "replaces (2·h_kv = ", 2 * shape.h_kv, "), so recomputing never saves link time");
    return choice;
  }
  constexpr int kSteps = 256;
  for (int k = 1; k <= kSteps; ++k) {
    const auto ratio = static_cast<double>(k) / kSteps;
    auto l = splits_for_ratio(s, ratio);
    const auto c = layer_cost(shape, s, l, rates, chunk);
    if (c.pipelined_s < choice.cost.pipelined_s) {
      choice.ratio = ratio;
      choice.l = std::move(l);
      choice.cost = c;
    }
  }
  const bool link_bound = choice.cost.transfer_s >= choice.cost.recompute_s;
  choice.reason =
      str("split ratio ", choice.ratio, " minimises the pipelined step (",
          choice.cost.pipelined_s * 1e3, " ms/layer predicted; transfer ",
          choice.cost.transfer_s * 1e3, " ms, recompute ", choice.cost.recompute_s * 1e3,
          " ms): ", link_bound ? "link-bound" : "compute-bound",
          " at B = ", rates.bytes_per_s / 1e9, " GB/s, F = ", rates.flops_per_s / 1e9, " GFLOP/s");
  return choice;
}

}  // namespace kvpr::planner
