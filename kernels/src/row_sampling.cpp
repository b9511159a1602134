// See row_sampling.h. Cost per row for a vocabulary of V: one pass to check the row, one to weigh
// the candidates, one for the log-softmax normaliser (2V exps in all), and the draw's walk. top_k
// selects with nth_element (O(V)); top_p finds its nucleus by halving with nth_element (O(V)
// expected); only the nucleus's ids are sorted for the walk, and not at all when every token is
// kept. Weights are taken relative to the best candidate, so no exp overflows whatever the
// temperature, and summed in double.
#include "kvpr/kernels/row_sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kvpr/common/error.h"

namespace kvpr::kernels {

namespace {

// Rejects what would make the choice meaningless (and the comparisons below not a strict weak
// order): a NaN anywhere, or no finite maximum.
void check_row(std::span<const float> row) {
  if (row.empty()) fail("sampler: the logits row is empty");
  float max = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (std::isnan(row[i])) fail("sampler: the logit of token ", i, " is NaN");
    max = std::max(max, row[i]);
  }
  if (!std::isfinite(max)) fail("sampler: the logits row has no finite maximum (", max, ")");
}

// Orders token ids by their value in z, largest first, lower id first on ties.
auto more_likely(std::span<const float> z) {
  return [z](std::int32_t a, std::int32_t b) {
    const auto ia = static_cast<std::size_t>(a);
    const auto ib = static_cast<std::size_t>(b);
    return z[ia] > z[ib] || (z[ia] == z[ib] && a < b);
  };
}

std::int32_t first_max(std::span<const float> z) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < z.size(); ++i) {
    if (z[i] > z[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

// Moves the nucleus (the most likely of `order` until their weight reaches `target`, the one that
// crosses it included) to the front of order, unsorted, and returns its size. Each round places
// the middle of the undecided range with nth_element and keeps the half the boundary lies in.
std::size_t nucleus(std::span<const float> z, std::vector<std::int32_t>& order,
                    const std::vector<double>& weights, double target) {
  const auto before = more_likely(z);
  const auto begin = order.begin();
  auto lo = begin;        // [begin, lo): in the nucleus, each more likely than anything after lo
  auto hi = order.end();  // the boundary lies in [lo, hi); [hi, end): out
  double need = target;   // weight still to cover from [lo, hi)
  while (hi - lo > 1) {
    const auto mid = lo + (hi - lo) / 2;
    std::nth_element(lo, mid, hi, before);
    double upper = 0;  // [lo, mid) are all more likely than *mid
    for (auto it = lo; it != mid; ++it) upper += weights[static_cast<std::size_t>(*it)];
    if (upper >= need) {
      hi = mid;
      continue;
    }
    need -= upper + weights[static_cast<std::size_t>(*mid)];
    if (need <= 0) return static_cast<std::size_t>(mid - begin) + 1;
    lo = mid + 1;
  }
  return std::min(order.size(), static_cast<std::size_t>(lo - begin) + 1);
}

std::int32_t draw(std::span<const float> z, const RowSampling& p, SampleScratch& s) {
  auto& order = s.order;
  order.resize(z.size());
  std::iota(order.begin(), order.end(), 0);
  if (p.top_k > 0 && static_cast<std::size_t>(p.top_k) < order.size()) {
    const auto k = static_cast<std::ptrdiff_t>(p.top_k);
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), more_likely(z));
    order.resize(static_cast<std::size_t>(k));
  }
  float z_max = -std::numeric_limits<float>::infinity();
  for (const std::int32_t t : order) z_max = std::max(z_max, z[static_cast<std::size_t>(t)]);
  if (!std::isfinite(z_max)) fail("sampler: the penalised logits have no finite maximum");
  // weights[t] = exp((z[t] - z_max) / T) for the candidates t; 1 for the most likely.
  const float inv_t = 1.0f / p.temperature;
  auto& weights = s.weights;
  weights.assign(z.size(), 0.0);
  double total = 0;
  for (const std::int32_t t : order) {
    const auto i = static_cast<std::size_t>(t);
    total += weights[i] = sample_exp((z[i] - z_max) * inv_t);
  }
  const std::size_t kept = p.top_p < 1 ? nucleus(z, order, weights, p.top_p * total) : order.size();
  order.resize(kept);
  std::sort(order.begin(), order.end());  // the walk goes in id order
  double mass = 0;
  for (const std::int32_t t : order) mass += weights[static_cast<std::size_t>(t)];
  double u = p.u * mass;
  std::int32_t last = order.front();  // the last kept token with any weight, should rounding
                                      // leave u over
  for (const std::int32_t t : order) {
    const double w = weights[static_cast<std::size_t>(t)];
    if (w <= 0) continue;
    last = t;
    u -= w;
    if (u < 0) return t;
  }
  return last;
}

// The log-probability of out.token and the top_n most likely tokens, under the log-softmax of
// the raw row.
void report(std::span<const float> row, SampledRow& out, std::int32_t top_n, SampleScratch& s) {
  const float row_max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (const float x : row) sum += sample_exp(x - row_max);
  const double log_z = double{row_max} + std::log(sum);
  const auto logprob = [&](std::int32_t t) {
    return static_cast<float>(double{row[static_cast<std::size_t>(t)]} - log_z);
  };
  out.logprob = logprob(out.token);
  if (top_n <= 0) return;
  const std::size_t n = std::min(row.size(), static_cast<std::size_t>(top_n));
  auto& order = s.order;
  order.resize(row.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                    more_likely(row));
  out.top.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.top.emplace_back(order[i], logprob(order[i]));
}

}  // namespace

void check_row_sampling(const RowSampling& p, std::int64_t vocab) {
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature))
    fail("sample: temperature ", p.temperature, " is not a finite number >= 0");
  if (p.temperature > 0 && !std::isfinite(1.0f / p.temperature))
    fail("sample: temperature ", p.temperature, " is too small to divide by (use 0 for greedy)");
  if (p.top_k < 0) fail("sample: top_k ", p.top_k, " is negative");
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("sample: top_p ", p.top_p, " is outside (0, 1]");
  if (!(p.u >= 0 && p.u < 1)) fail("sample: the draw u ", p.u, " is outside [0, 1)");
  if (p.logprobs < 0 || p.logprobs > kMaxSampleLogprobs) {
    fail("sample: logprobs ", p.logprobs, " is outside [0, ", kMaxSampleLogprobs, "]");
  }
  for (const auto& [token, penalty] : p.penalties) {
    if (token < 0 || token >= vocab)
      fail("sample: penalised token ", token, " is outside the vocabulary of ", vocab);
    if (!std::isfinite(penalty)) fail("sample: the penalty of token ", token, " is ", penalty);
  }
}

SampledRow sample_row(std::span<const float> row, const RowSampling& p, SampleScratch& s) {
  check_row(row);
  std::span<const float> z = row;
  if (!p.penalties.empty()) {
    s.z.assign(row.begin(), row.end());
    for (const auto& [token, penalty] : p.penalties)
      s.z[static_cast<std::size_t>(token)] -= penalty;
    z = s.z;
  }
  SampledRow out;
  out.token = p.greedy() ? first_max(z) : draw(z, p, s);
  report(row, out, p.logprobs, s);
  return out;
}

SampledRow score_row(std::span<const float> row, std::int32_t token, std::int32_t top_n,
                     SampleScratch& s) {
  check_row(row);
  if (token < 0 || static_cast<std::size_t>(token) >= row.size()) {
    fail("score: token ", token, " is outside the vocabulary of ", row.size());
  }
  SampledRow out;
  out.token = token;
  report(row, out, top_n, s);
  return out;
}

}  // namespace kvpr::kernels
