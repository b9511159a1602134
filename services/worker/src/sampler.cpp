// Sampler: penalties → temperature → top_k → top_p → draw over one logits row.
//
// Cost per step for a vocabulary of V: one pass to check the row, one to weigh the candidates and
// one for the log-softmax normaliser (O(V) exps in all). top_k selects with nth_element (O(V));
// top_p sorts only as far as the nucleus reaches, in growing partial_sort chunks, so a nucleus of a
// few dozen tokens out of 50k costs about one O(V) pass, not a full sort. Weights are computed in
// double relative to the best candidate, so no exp overflows whatever the temperature.
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
  const auto before = more_likely(z);
  order_.resize(z.size());
  std::iota(order_.begin(), order_.end(), 0);
  if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < order_.size()) {
    const auto k = static_cast<std::ptrdiff_t>(params_.top_k);
    std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.end(), before);
    order_.resize(static_cast<std::size_t>(k));
  }
  const std::size_t n = order_.size();
  float z_max = -std::numeric_limits<float>::infinity();
  for (const std::int32_t t : order_) z_max = std::max(z_max, z[static_cast<std::size_t>(t)]);
  if (!std::isfinite(z_max)) fail("sampler: the penalised logits have no finite maximum");
  const double inv_t = 1.0 / params_.temperature;
  const auto weight = [&](std::int32_t t) {
    return std::exp((double{z[static_cast<std::size_t>(t)]} - z_max) * inv_t);
  };
  weights_.resize(n);
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) total += weights_[i] = weight(order_[i]);

  std::size_t kept = n;
  double mass = total;
  if (params_.top_p < 1) {
    // The nucleus: the most likely tokens until their mass reaches top_p (the one crossing it
    // included), sorted chunk by chunk; partial_sort leaves the rest after the sorted prefix.
    const double target = params_.top_p * total;
    double cum = 0;
    std::size_t sorted = 0;
    kept = 0;
    while (kept == 0 && sorted < n) {
      const std::size_t end = std::min(n, std::max<std::size_t>(64, 2 * sorted));
      const auto first = order_.begin();
      std::partial_sort(first + static_cast<std::ptrdiff_t>(sorted),
                        first + static_cast<std::ptrdiff_t>(end), order_.end(), before);
      for (; sorted < end && kept == 0; ++sorted) {
        cum += weights_[sorted] = weight(order_[sorted]);
        if (cum >= target) kept = sorted + 1;
      }
    }
    if (kept == 0) kept = n;  // rounding kept the sum just below target
    mass = cum;
  }
  double u = unit_interval(rng_) * mass;
  std::size_t last = 0;  // the last candidate with any weight, should rounding leave u over
  for (std::size_t i = 0; i < kept; ++i) {
    if (weights_[i] <= 0) continue;
    last = i;
    u -= weights_[i];
    if (u < 0) return order_[i];
  }
  return order_[last];
}

void Sampler::fill_logprobs(std::span<const float> row, TokenChoice& choice) {
  const double row_max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (const float x : row) sum += std::exp(double{x} - row_max);
  const double log_z = row_max + std::log(sum);
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
