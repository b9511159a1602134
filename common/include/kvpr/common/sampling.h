// How one request chooses its tokens and when each of its sequences stops, as the worker sees it
// (token ids only; stop strings belong to the gateway, which sees text). Defaults are greedy
// decoding with no penalties and no stop ids beyond the model's end-of-sequence ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace kvpr {

struct SamplingParams {
  double temperature = 0;             // 0: greedy (argmax); otherwise logits / temperature
  std::int64_t top_k = 0;             // keep the k most likely tokens; 0: all
  double top_p = 1;                   // keep the smallest set whose probability reaches top_p
  std::optional<std::uint64_t> seed;  // same seed, same tokens on the same backend
  double presence_penalty = 0;        // OpenAI semantics, over the sequence's generated tokens
  double frequency_penalty = 0;
  std::vector<std::int32_t> stop_token_ids;  // besides the model's EOS ids (unless ignore_eos)
  bool ignore_eos = false;
  std::int32_t logprobs = -1;  // -1: none; n >= 0: the chosen token's and the n most likely

  // Raises Error(failed) naming the first bad field and its value (vocab bounds the ids).
  void validate(std::int64_t vocab) const;
  bool greedy() const { return temperature == 0 || top_k == 1; }
};

// The most top-n log-probabilities a request may ask for.
inline constexpr std::int32_t kMaxLogprobs = 20;
// The most stop_token_ids a request may give.
inline constexpr std::size_t kMaxStopTokenIds = 64;

}  // namespace kvpr
