// SamplingParams::validate: the checks a request's sampling fields pass before a worker builds a
// Sampler from them. Each failure is one line naming the field and the value it had.
#include "kvpr/common/sampling.h"

#include <cmath>

#include "kvpr/common/error.h"

namespace kvpr {

namespace {

void check_penalty(const char* field, double value) {
  if (!(std::isfinite(value) && value >= -2 && value <= 2))
    fail("sampling: ", field, " must be in [-2, 2], got ", value);
}

}  // namespace

void SamplingParams::validate(std::int64_t vocab) const {
  if (!(std::isfinite(temperature) && temperature >= 0 && temperature <= 2))
    fail("sampling: temperature must be finite and in [0, 2], got ", temperature);
  if (top_k < 0) fail("sampling: top_k must be >= 0 (0: all tokens), got ", top_k);
  if (!(std::isfinite(top_p) && top_p > 0 && top_p <= 1))
    fail("sampling: top_p must be in (0, 1], got ", top_p);
  check_penalty("presence_penalty", presence_penalty);
  check_penalty("frequency_penalty", frequency_penalty);
  if (stop_token_ids.size() > kMaxStopTokenIds) {
    fail("sampling: stop_token_ids has ", stop_token_ids.size(), " ids, at most ", kMaxStopTokenIds,
         " are allowed");
  }
  for (std::size_t i = 0; i < stop_token_ids.size(); ++i) {
    const std::int32_t id = stop_token_ids[i];
    if (id < 0 || id >= vocab) {
      fail("sampling: stop_token_ids[", i, "] is ", id, ", not a token id in [0, ", vocab, ")");
    }
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs)
    fail("sampling: logprobs must be in [-1, ", kMaxLogprobs, "], got ", logprobs);
}

}  // namespace kvpr
