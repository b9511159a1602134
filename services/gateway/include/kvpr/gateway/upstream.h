// What the gateway asks of the workers behind it: token ids in, token ids out. The gateway owns
// text (tokenizing, detokenizing, stop strings, chat templates); an Upstream owns routing a
// request to a worker, streaming its tokens back and cancelling it. WorkerUpstream (workers over
// ZeroMQ) is the real one; tests of the HTTP layer may use an in-process one.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/common/sampling.h"

namespace kvpr::gateway {

struct TokenRequest {
  std::vector<std::int32_t> prompt;
  std::int64_t n = 1;            // sequences sampled from this prompt (OpenAI's `n`)
  std::int64_t max_tokens = 16;  // per sequence
  SamplingParams sampling;       // per sequence i, a set seed becomes seed + i
  // Score the prompt: on_prompt gets each prompt token's log-probability (completions' echo).
  bool score_prompt = false;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
};

enum class FinishReason { stop, length };  // stop: a stop/EOS id (or the gateway's stop string)

struct TokenEvent {
  std::int64_t index = 0;  // which of the request's n sequences
  std::int32_t token = 0;
  float logprob = 0;  // of the chosen token (when sampling.logprobs >= 0)
  std::vector<std::pair<std::int32_t, float>> top;  // the sampling.logprobs most likely
};

struct UpstreamCallbacks {
  // Waiting in a worker's queue, with the number of requests ahead (may repeat as keep-alive).
  std::function<void(std::int64_t ahead)> on_queued;
  // One generated token. Return false to stop this sequence now (a stop string matched, or the
  // client went away); the upstream frees it within a step and reports no more of its tokens.
  std::function<bool(const TokenEvent&)> on_token;
  // A sequence ended by itself: a stop id (reason stop, the id was delivered by on_token first)
  // or max_tokens (reason length).
  std::function<void(std::int64_t index, FinishReason reason)> on_finish;
  // With score_prompt, before a sequence's first token: entry i is prompt token i + 1 (its
  // logprob and the sampling.logprobs most likely tokens at its position). May come again, the
  // same, when the request is retried on another worker before any token was delivered.
  std::function<void(std::int64_t index, const std::vector<TokenEvent>& prompt)> on_prompt;
};

struct WorkerRoom {
  std::string name;
  std::int64_t running = 0;
  std::int64_t queued = 0;
  std::int64_t max_batch = 0;
  std::int64_t max_queue = 0;
  std::uint64_t kv_free_bytes = 0;
  bool alive = false;
};

class Upstream {
 public:
  virtual ~Upstream() = default;
  // Runs one request to its end on the calling thread: returns when every sequence finished or
  // was stopped. Throws Error: overloaded when every worker is full (before any token was
  // delivered), disconnected when the worker died or went silent, failed for a bad request.
  virtual void generate(const TokenRequest& request, const UpstreamCallbacks& callbacks) = 0;
  // The workers as last heard from (for /health, routing and /metrics).
  virtual std::vector<WorkerRoom> workers() const = 0;
};

}  // namespace kvpr::gateway
