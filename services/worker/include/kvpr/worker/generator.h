// Greedy generation for a batch of prompts on one Engine: prefill each prompt, then decode steps
// over the whole batch until every sequence has max_new_tokens tokens. Sequences are released
// from the store when generation ends, also on error.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "kvpr/worker/engine.h"

namespace kvpr::worker {

struct GenerateRequest {
  std::vector<std::vector<std::int32_t>> prompts;
  std::int64_t max_new_tokens = 16;
  bool keep_logits = false;  // keep the logits row each generated token was chosen from
  // Score each prompt: the log-probability of every prompt token after the first under the
  // logits of the position before it (and the sampling.logprobs most likely there), reported
  // with the sequence's first token; a prompt that repeats an earlier one of the request is not
  // scored again (the batcher; `generate` ignores it).
  bool score_prompt = false;
};

// Why a sequence ended: a stop or EOS id (its last token), max_new_tokens (or the model's last
// position), or a cancel.
enum class Finish { stop, length, cancelled };

struct SequenceResult {
  std::vector<std::int32_t> tokens;  // generated tokens only
  Finish finish = Finish::length;
  std::vector<float> logits;  // [tokens, vocab] when keep_logits
};

struct GenerateResult {
  std::vector<SequenceResult> sequences;
  double prefill_s = 0;        // all prompts
  std::vector<double> step_s;  // wall time of each decode step
  PhaseTimes decode_times;     // summed over decode steps
  std::int64_t recompute_tokens = 0;
  std::int64_t transfer_tokens = 0;
  std::uint64_t h2d_bytes = 0;
  std::uint64_t d2h_bytes = 0;
  planner::Plan last_plan;
  double total_s = 0;

  // Generated tokens per second of decode steps (b tokens per step).
  double decode_tokens_per_s() const;
};

// What generation has produced after the prefill (step 0) and after each decode step.
struct StepEvent {
  std::int64_t step = 0;   // 0: tokens chosen from the prompts' last logits; k: decode step k
  std::int64_t steps = 0;  // decode steps in all (max_new_tokens - 1)
  std::span<const std::int32_t> tokens;  // one per sequence
  std::span<const float> logits;         // [sequences, vocab]: the rows the tokens came from
  const StepStats* stats = nullptr;      // the decode step's stats (null for step 0)
};
using StepCallback = std::function<void(const StepEvent&)>;

// Index of the largest value (the first one on ties).
std::int32_t greedy(const float* logits, std::int64_t vocab);

GenerateResult generate(Engine& engine, const GenerateRequest& request,
                        const StepCallback& on_step = {});

}  // namespace kvpr::worker
