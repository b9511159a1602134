// The arithmetic of DESIGN.md §1: bytes moved and FLOPs recomputed per layer of a decode step, and
// the predicted time of the paper's schedule and of the pipelined one, for a batch whose sequences
// have context lengths s_i and splits l_i. Rates are constants here (the backend's nominal rates);
// measured curves plug in through the same functions later.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvpr::planner {

struct LayerShape {
  std::int64_t h = 0;     // hidden size (width of one stored activation)
  std::int64_t h_kv = 0;  // n_kv_heads · head_dim (width of K and of V)
  std::int64_t p = 0;     // bytes per stored element
};

struct Rates {
  double bytes_per_s = 0;  // B: host→device bandwidth
  double flops_per_s = 0;  // F: rate of the [m, h] × [h, 2·h_kv] recompute GEMM
};

struct LayerCost {
  double activation_bytes = 0;  // Σ A(l_i)
  double kv_bytes = 0;          // Σ K(l_i)
  double recompute_flops = 0;   // Σ 4 · l_i · h · h_kv
  double transfer_s = 0;        // (A + K) / B
  double recompute_s = 0;       // flops / F
  double paper_s = 0;           // A/B + max(flops/F, K/B)
  double pipelined_s = 0;       // max((A+K)/B, flops/F) + fill
};

// s[i] is sequence i's context length, l[i] its split (clamped to [0, s[i]]); `chunk` is the number
// of activation rows recomputed per pipeline chunk (it sets the fill time).
LayerCost layer_cost(const LayerShape& shape, std::span<const std::int64_t> s,
                     std::span<const std::int64_t> l, const Rates& rates, std::int64_t chunk);

// LB = min over l of max((A(l)+K(l))/B, flops(l)/F), the split applied as one ratio to the batch.
double lower_bound_s(const LayerShape& shape, std::span<const std::int64_t> s, const Rates& rates);

// Splits l_i = round(ratio · s_i).
std::vector<std::int64_t> splits_for_ratio(std::span<const std::int64_t> s, double ratio);
// Host splits for a fraction of each context on the host: m_i = s_i − round(host_ratio · s_i),
// clamped to [l_i, s_i] (the three-way split).
std::vector<std::int64_t> host_splits_for_ratio(std::span<const std::int64_t> s,
                                                std::span<const std::int64_t> l, double host_ratio);

struct SplitChoice {
  double ratio = 0;
  std::vector<std::int64_t> l;
  LayerCost cost;
  std::string reason;
};

// The ratio that minimises the pipelined layer time. When an activation is not smaller than the
// K,V it replaces (h ≥ 2·h_kv) recomputing never pays: ratio 0, and the reason says so.
SplitChoice choose_split(const LayerShape& shape, std::span<const std::int64_t> s,
                         const Rates& rates, std::int64_t chunk);

}  // namespace kvpr::planner
