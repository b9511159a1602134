// Token choice for one sequence: a Sampler turns each logits row the model produces for the
// sequence into the next token, as its request's SamplingParams say, and tells when the sequence
// stops. It owns the sequence's sampling state (the random generator and how often each token was
// generated, for the presence and frequency penalties), so it lives exactly as long as the
// sequence; one thread at a time calls it (the worker's step loop). Each sequence gets its own,
// seeded on its own.
//
// The order of operations is vLLM's and OpenAI's: penalties → temperature → top_k → top_p → draw.
// Greedy requests (temperature 0 or top_k 1) take the first maximum of the penalised logits, the
// same token as generator.h's greedy() when no penalty is set.
//
// Reported log-probabilities are those of the model: the log-softmax of the raw logits row, before
// penalties, temperature and truncation, as OpenAI's API reports them. They say how likely the
// model found a token, not how likely this sampler was to draw it.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvpr/common/sampling.h"

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
  // generated. Raises Error(failed) for an empty row or one without a finite logit when sampling.
  TokenChoice next(std::span<const float> logits_row);

  // True when `token` ends the sequence: an EOS id (unless ignore_eos) or a stop_token_id.
  bool stops(std::int32_t token) const;

  const SamplingParams& params() const { return params_; }
  std::uint64_t seed() const { return seed_; }
  // How many times `token` was generated so far.
  std::int32_t count(std::int32_t token) const;

 private:
  // The logits the choice is made from: the row, or the penalised copy of it in logits_.
  std::span<const float> penalised(std::span<const float> row);
  std::int32_t draw(std::span<const float> z);
  std::size_t nucleus(std::span<const float> z, double target);
  void fill_logprobs(std::span<const float> row, TokenChoice& choice);

  SamplingParams params_;
  std::vector<std::int32_t> eos_ids_;
  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::unordered_map<std::int32_t, std::int32_t> counts_;  // generated token → times
  // Scratch reused across steps so that a step allocates nothing once warm.
  std::vector<float> logits_;
  std::vector<std::int32_t> order_;  // candidate token ids
  std::vector<double> weights_;      // by token id, valid for the candidates of this step
};

// A double in [0, 1) from the top 53 bits of one draw: the same on every platform, unlike
// std::uniform_real_distribution.
double unit_interval(std::mt19937_64& rng);

}  // namespace kvpr::worker
