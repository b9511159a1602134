// Token choice for one sequence: a Sampler turns each logits row the model produces for the
// sequence into the next token, as its request's SamplingParams say, and tells when the sequence
// stops. It owns the sequence's sampling state (the random generator and how often each token was
// generated, for the presence and frequency penalties), so it lives exactly as long as the
// sequence; one thread at a time calls it (the worker's step loop). Each sequence gets its own,
// seeded on its own.
//
// The choice itself is kernels::sample_row (row_sampling.h: penalties → temperature → top_k →
// top_p → draw, greedy the first maximum), the algorithm every backend's `sample` op runs. A step
// either hands the Sampler a row on the host (`next`) or, keeping the logits on the device, asks
// it for the step's numbers (`prepare`: the draw and the penalties), has the backend choose, and
// gives the choice back (`accept`). Either way the same draw is taken from the generator, so a
// seeded request gives the same tokens on both paths of one backend.
//
// Reported log-probabilities are those of the model: the log-softmax of the raw logits row, before
// penalties, temperature and truncation, as OpenAI's API reports them.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvpr/common/sampling.h"
#include "kvpr/kernels/row_sampling.h"

namespace kvpr::worker {

struct TokenLogprob {
  std::int32_t token = 0;
  float logprob = 0;
  bool operator==(const TokenLogprob&) const = default;
};

struct TokenChoice {
  std::int32_t token = 0;
  float logprob = 0;              // of `token` under the log-softmax of the raw logits
  std::vector<TokenLogprob> top;  // the params' `logprobs` most likely tokens, most likely first
                                  // (ties: lower id first); empty when logprobs <= 0
};

class Sampler {
 public:
  // Seeds from params.seed, or from std::random_device when the request gave none.
  Sampler(SamplingParams params, std::vector<std::int32_t> eos_ids);
  // Seeds from `seed` (a request with n sequences gives each its own, derived from its seed).
  Sampler(SamplingParams params, std::vector<std::int32_t> eos_ids, std::uint64_t seed);

  // Chooses the next token from the row of logits (one per vocabulary entry) and counts it as
  // generated. Raises Error(failed) for an empty row or one without a finite logit.
  TokenChoice next(std::span<const float> logits_row);
  // The numbers of this step's choice (draws from the generator when sampling); then `accept`
  // the backend's choice made with them. Until then the draw stays pending: a step that failed
  // and is retried (or a sequence preempted and resumed) gets the same draw again, so a seeded
  // request's tokens do not depend on what happened to the batch around it.
  kernels::RowSampling prepare();
  TokenChoice accept(const kernels::SampledRow& choice);

  // True when `token` ends the sequence: an EOS id (unless ignore_eos) or a stop_token_id.
  bool stops(std::int32_t token) const;

  const SamplingParams& params() const { return params_; }
  std::uint64_t seed() const { return seed_; }
  // How many times `token` was generated so far.
  std::int32_t count(std::int32_t token) const;

 private:
  SamplingParams params_;
  std::vector<std::int32_t> eos_ids_;
  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::unordered_map<std::int32_t, std::int32_t> counts_;  // generated token → times
  kernels::SampleScratch scratch_;   // reused across steps: a warm step allocates nothing
  std::optional<double> pending_u_;  // drawn by prepare, used up by accept
};

// A double in [0, 1) from the top 53 bits of one draw: the same on every platform, unlike
// std::uniform_real_distribution.
double unit_interval(std::mt19937_64& rng);

}  // namespace kvpr::worker
