// Sampler: penalties → temperature → top_k → top_p → draw over one logits row.
//
// Cost per step for a vocabulary of V: one pass to check the row, one to weigh the candidates and
// one for the log-softmax normaliser (2V exps in all). Nothing is sorted: top_k selects with
// nth_element (O(V)) and top_p finds its nucleus by halving with nth_element (O(V) expected), then
// draws over it unsorted, which gives each token the same probability as a sorted walk would.
// Weights are taken relative to the best candidate, so no exp overflows whatever the temperature,
// and summed in double.
//
// Candidates are ordered by (logit descending, id ascending) everywhere, so ties resolve the same
// way in top_k, top_p and the reported top-n, and greedy keeps generator.h's first maximum.
#include "kvpr/worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/worker/generator.h"

namespace kvpr::worker {

namespace {

std::uint64_t random_seed() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ std::uint64_t{device()};
}

// Rejects what would make the choice meaningless (and the comparisons below not a strict weak
// order): a NaN anywhere, or no finite maximum. Returns the maximum.
float checked_max(std::span<const float> row) {
  if (row.empty()) fail("sampler: the logits row is empty");
  if (row.size() > std::size_t{std::numeric_limits<std::int32_t>::max()})
    fail("sampler: a logits row of ", row.size(), " entries is larger than any vocabulary");
  float max = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (std::isnan(row[i])) fail("sampler: the logit of token ", i, " is NaN");
    max = std::max(max, row[i]);
  }
  if (!std::isfinite(max)) fail("sampler: the logits row has no finite maximum (", max, ")");
  return max;
}

// Orders token ids by their value in z, largest first, lower id first on ties.
auto more_likely(std::span<const float> z) {
  return [z](std::int32_t a, std::int32_t b) {
    const auto ia = static_cast<std::size_t>(a);
    const auto ib = static_cast<std::size_t>(b);
    return z[ia] > z[ib] || (z[ia] == z[ib] && a < b);
  };
}

}  // namespace

double unit_interval(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

Sampler::Sampler(SamplingParams params, std::vector<std::int32_t> eos_ids)
    : Sampler(params, std::move(eos_ids), params.seed ? *params.seed : random_seed()) {}

Sampler::Sampler(SamplingParams params, std::vector<std::int32_t> eos_ids, std::uint64_t seed)
    : params_(std::move(params)), eos_ids_(std::move(eos_ids)), seed_(seed), rng_(seed) {
  // The vocabulary is not known here; the caller checks stop ids against it (validate(vocab)).
  params_.validate(std::numeric_limits<std::int32_t>::max());
}

TokenChoice Sampler::next(std::span<const float> logits_row) {
  checked_max(logits_row);
  const std::span<const float> z = penalised(logits_row);
  TokenChoice choice;
  choice.token = params_.greedy() ? greedy(z.data(), static_cast<std::int64_t>(z.size())) : draw(z);
  fill_logprobs(logits_row, choice);
  ++counts_[choice.token];
  return choice;
}

bool Sampler::stops(std::int32_t token) const {
  const auto in = [token](const std::vector<std::int32_t>& ids) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  return (!params_.ignore_eos && in(eos_ids_)) || in(params_.stop_token_ids);
}

std::int32_t Sampler::count(std::int32_t token) const {
  const auto it = counts_.find(token);
  return it == counts_.end() ? 0 : it->second;
}

// OpenAI's penalties: logit[t] -= presence · (count[t] > 0) + frequency · count[t].
std::span<const float> Sampler::penalised(std::span<const float> row) {
  if ((params_.presence_penalty == 0 && params_.frequency_penalty == 0) || counts_.empty())
    return row;
  logits_.assign(row.begin(), row.end());
  for (const auto& [token, n] : counts_) {
    if (static_cast<std::size_t>(token) >= logits_.size()) continue;
    logits_[static_cast<std::size_t>(token)] -=
        static_cast<float>(params_.presence_penalty + params_.frequency_penalty * n);
  }
  return logits_;
}

std::int32_t Sampler::draw(std::span<const float> z) {
  order_.resize(z.size());
  std::iota(order_.begin(), order_.end(), 0);
  if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < order_.size()) {
    const auto k = static_cast<std::ptrdiff_t>(params_.top_k);
    std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.end(), more_likely(z));
    order_.resize(static_cast<std::size_t>(k));
  }
  float z_max = -std::numeric_limits<float>::infinity();
  for (const std::int32_t t : order_) z_max = std::max(z_max, z[static_cast<std::size_t>(t)]);
  if (!std::isfinite(z_max)) fail("sampler: the penalised logits have no finite maximum");
  // weights_[t] = exp((z[t] - z_max) / T) for the candidates t; 1 for the most likely.
  const auto inv_t = static_cast<float>(1.0 / params_.temperature);
  weights_.resize(z.size());
  double total = 0;
  for (const std::int32_t t : order_) {
    const auto i = static_cast<std::size_t>(t);
    total += weights_[i] = std::exp((z[i] - z_max) * inv_t);
  }
  const std::size_t kept = params_.top_p < 1 ? nucleus(z, params_.top_p * total) : order_.size();
  double mass = total;
  if (kept < order_.size()) {
    mass = 0;
    for (std::size_t i = 0; i < kept; ++i) mass += weights_[static_cast<std::size_t>(order_[i])];
  }
  double u = unit_interval(rng_) * mass;
  std::size_t last = 0;  // the last candidate with any weight, should rounding leave u over
  for (std::size_t i = 0; i < kept; ++i) {
    const double w = weights_[static_cast<std::size_t>(order_[i])];
    if (w <= 0) continue;
    last = i;
    u -= w;
    if (u < 0) return order_[i];
  }
  return order_[last];
}

// Moves the nucleus (the most likely candidates until their weight reaches `target`, the one that
// crosses it included) to the front of order_, unsorted, and returns its size. Each round places
// the middle of the undecided range with nth_element and keeps the half the boundary lies in, so
// the whole costs O(n) expected, where a sort would cost O(n log n).
std::size_t Sampler::nucleus(std::span<const float> z, double target) {
  const auto before = more_likely(z);
  const auto begin = order_.begin();
  auto lo = begin;         // [begin, lo): in the nucleus, each more likely than anything after lo
  auto hi = order_.end();  // the boundary lies in [lo, hi); [hi, end): out
  double need = target;    // weight still to cover from [lo, hi)
  while (hi - lo > 1) {
    const auto mid = lo + (hi - lo) / 2;
    std::nth_element(lo, mid, hi, before);
    double upper = 0;  // [lo, mid) are all more likely than *mid
    for (auto it = lo; it != mid; ++it) upper += weights_[static_cast<std::size_t>(*it)];
    if (upper >= need) {
      hi = mid;
      continue;
    }
    need -= upper + weights_[static_cast<std::size_t>(*mid)];
    if (need <= 0) return static_cast<std::size_t>(mid - begin) + 1;
    lo = mid + 1;
  }
  // One candidate left: it crosses the target. (lo == hi only when rounding left `need` a hair
  // above zero after taking everything up to hi.)
  return std::min(order_.size(), static_cast<std::size_t>(lo - begin) + 1);
}

void Sampler::fill_logprobs(std::span<const float> row, TokenChoice& choice) {
  const float row_max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (const float x : row) sum += std::exp(x - row_max);
  const double log_z = double{row_max} + std::log(sum);
  const auto logprob = [&](std::int32_t t) {
    return static_cast<float>(double{row[static_cast<std::size_t>(t)]} - log_z);
  };
  choice.logprob = logprob(choice.token);
  if (params_.logprobs <= 0) return;
  const std::size_t n = std::min(row.size(), static_cast<std::size_t>(params_.logprobs));
  order_.resize(row.size());
  std::iota(order_.begin(), order_.end(), 0);
  std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(n), order_.end(),
                    more_likely(row));
  choice.top.reserve(n);
  for (std::size_t i = 0; i < n; ++i) choice.top.push_back({order_[i], logprob(order_[i])});
}

}  // namespace kvpr::worker
