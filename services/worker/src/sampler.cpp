// Sampler: a sequence's sampling state around kernels::sample_row (row_sampling.h), which makes
// the choice. See sampler.h.
#include "kvpr/worker/sampler.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "kvpr/common/error.h"

namespace kvpr::worker {

namespace {

std::uint64_t random_seed() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ std::uint64_t{device()};
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

kernels::RowSampling Sampler::prepare() {
  kernels::RowSampling p;
  p.temperature = static_cast<float>(params_.temperature);
  // A temperature so small that 1/T overflows a float is T -> 0's limit: greedy.
  if (p.temperature > 0 && !std::isfinite(1.0f / p.temperature)) p.temperature = 0;
  p.top_k = params_.top_k;
  p.top_p = params_.top_p;
  p.logprobs = std::max(params_.logprobs, 0);
  if (!p.greedy()) {
    if (!pending_u_) pending_u_ = unit_interval(rng_);
    p.u = *pending_u_;
  }
  if (params_.presence_penalty != 0 || params_.frequency_penalty != 0) {
    // OpenAI's penalties: logit[t] -= presence · (count[t] > 0) + frequency · count[t].
    p.penalties.reserve(counts_.size());
    for (const auto& [token, n] : counts_) {
      p.penalties.emplace_back(
          token, static_cast<float>(params_.presence_penalty + params_.frequency_penalty * n));
    }
  }
  return p;
}

TokenChoice Sampler::accept(const kernels::SampledRow& row) {
  TokenChoice choice;
  choice.token = row.token;
  choice.logprob = row.logprob;
  choice.top.reserve(row.top.size());
  for (const auto& [token, logprob] : row.top) choice.top.push_back({token, logprob});
  ++counts_[choice.token];
  pending_u_.reset();
  return choice;
}

TokenChoice Sampler::next(std::span<const float> logits_row) {
  kernels::RowSampling p = prepare();
  // A generated token beyond this row (a row narrower than the vocabulary the ids came from)
  // takes no penalty here.
  std::erase_if(p.penalties, [&](const auto& tp) {
    return static_cast<std::size_t>(tp.first) >= logits_row.size();
  });
  return accept(kernels::sample_row(logits_row, p, scratch_));
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

}  // namespace kvpr::worker
