// Choosing one token from one row of logits: the algorithm every backend's `sample` op runs, and
// the reference the CUDA kernel is tested against. The caller (the worker's Sampler) keeps the
// sequence's state — its random generator and its generated-token counts — and hands each step's
// draw `u` and penalties in; the op itself is a pure function of the row and these numbers, so a
// device can run it where the logits are and send back only the token and the requested top-n.
//
// The order of operations is vLLM's and OpenAI's: penalties → temperature → top_k → top_p → draw.
// Tokens are ranked by (logit descending, id ascending) everywhere, so ties resolve the same way
// in top_k, top_p, greedy (the first maximum) and the reported top-n. The draw walks the kept
// tokens in id order: token = the smallest id whose cumulative weight exceeds u · (kept weight),
// which gives each token its probability and is the same walk on every backend.
//
// Reported log-probabilities are the model's: the log-softmax of the raw row, before penalties,
// temperature and truncation, as OpenAI's API reports them.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace kvpr::kernels {

struct RowSampling {
  float temperature = 0;      // 0: greedy
  std::int64_t top_k = 0;     // keep the k most likely tokens; 0: all
  double top_p = 1;           // keep the most likely tokens until their probability reaches it
  double u = 0;               // the draw, in [0, 1); unused when greedy
  std::int32_t logprobs = 0;  // how many of the most likely tokens to report (0: none)
  // Subtracted from logit[token] before the choice (OpenAI's presence and frequency penalties).
  std::vector<std::pair<std::int32_t, float>> penalties;

  bool greedy() const { return temperature == 0 || top_k == 1; }
};

struct SampledRow {
  std::int32_t token = 0;
  float logprob = 0;  // of `token` under the log-softmax of the raw row
  // The `logprobs` most likely tokens of the raw row with their log-probabilities, most likely
  // first.
  std::vector<std::pair<std::int32_t, float>> top;
  bool operator==(const SampledRow&) const = default;
};

// The most top-n log-probabilities the op reports per row.
inline constexpr std::int32_t kMaxSampleLogprobs = 20;
// The largest vocabulary the op takes (token ids and their bisections stay within an int).
inline constexpr std::int64_t kMaxSampleVocab = std::int64_t{1} << 30;

// exp(x) rounded to float: the weights and the normaliser's terms, the same on every backend
// (computed in double and rounded once, so two correct double exps agree on nearly every x,
// where two float exps may differ by an ulp or two).
inline float sample_exp(float x) {
  return static_cast<float>(std::exp(static_cast<double>(x)));
}

// Raises Error(failed) naming the first bad field of `p` for a vocabulary of `vocab` tokens.
void check_row_sampling(const RowSampling& p, std::int64_t vocab);

// The choice for one row (p already checked). Raises Error(failed) for a row with a NaN (naming
// the token) or without a finite maximum. `scratch` is reused across calls.
struct SampleScratch {
  std::vector<float> z;
  std::vector<std::int32_t> order;
  std::vector<double> weights;
};
SampledRow sample_row(std::span<const float> row, const RowSampling& p, SampleScratch& scratch);
// A given token's log-probability under the row's log-softmax and the top_n most likely tokens
// (scoring a prompt): the numbers sample_row reports, for `token` instead of a chosen one.
SampledRow score_row(std::span<const float> row, std::int32_t token, std::int32_t top_n,
                     SampleScratch& scratch);

}  // namespace kvpr::kernels
