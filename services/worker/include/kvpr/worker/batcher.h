// Continuous batching of one worker: requests arrive at any time, each with its own prompts,
// sampling and stop rules; between decode steps finished and cancelled sequences leave the batch
// and waiting ones join after their prefill, which runs between steps in chunks: at most
// max_prefill_tokens_per_step prompt tokens per step, so a long prompt stalls the running batch
// by one chunk per step (Engine::extend continues a prompt from its stored context). The split l is
// planned for the batch as it is at each step (the Engine asks its planner, which caches by shape
// bucket).
//
// Admission never loses work: a sequence joins only when the KV store can hold it (its prompt
// plus everything it may generate, or with `AdmitReserve::prompt` only its prompt); when the store
// fills anyway (a store shared with other workers, or the optimistic rule) the most recently
// admitted sequence is preempted — its blocks freed, itself requeued at the front, its cache
// rebuilt from its tokens by a prefill when it resumes — and the step is retried. Each sequence's
// tokens are what it produces alone: its rows of a batched step are computed as a batch of one
// would (up to GEMM rounding), and it samples from its own Sampler with its own seed.
//
// Requests run on one Engine at a time; the engine's policy and split are those of the requests
// in the batch, so a request asking for another policy waits until the batch drains.
//
// Threading: one thread (the worker's executor) calls everything here, including the callbacks;
// `BatchJob::cancelled` may be set from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/common/sampling.h"
#include "kvpr/kernels/backend.h"
#include "kvpr/kernels/row_sampling.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/generator.h"
#include "kvpr/worker/sampler.h"

namespace kvpr::worker {

enum class AdmitReserve {
  full,    // prompt + max_new_tokens of every running sequence fits: no preemption on one store
  prompt,  // only the prompt (and a block per running sequence): more in the batch, may preempt
};

// "full" or "prompt" (the --admit flag); anything else is an Error naming it.
AdmitReserve parse_admit(std::string_view name);

struct BatcherOptions {
  std::int64_t max_batch = 32;                      // sequences decoded together
  std::int64_t max_prefill_tokens_per_step = 2048;  // prompt tokens prefilled between two steps
  AdmitReserve admit = AdmitReserve::full;
  EngineOptions engine;  // trace, host split and threads; policy and split come from requests
};

// One token of one sequence of a job, as a step produced it.
struct TokenOut {
  std::int64_t index = 0;  // the sequence within its job
  std::int32_t token = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top;  // the sampling.logprobs most likely, when >= 0
};

// A sequence's scored prompt (GenerateRequest::score_prompt): tokens[i] is prompt token i + 1
// with its log-probability and the most likely tokens at its position.
struct PromptScores {
  std::int64_t index = 0;  // the sequence within its job
  std::vector<TokenOut> tokens;
};

// What one job got from one step (a prefill admission or a decode step).
struct JobStep {
  std::int64_t step = 0;  // the batcher's step counter (0 before its first decode step)
  std::vector<TokenOut> tokens;
  bool with_logprobs = false;  // the tokens' logprob fields mean something (sampling.logprobs >= 0)
  std::vector<float> logits;   // [tokens, vocab] when request.keep_logits
  std::vector<PromptScores> prompts;  // with request.score_prompt, beside each first token
  std::vector<std::pair<std::int64_t, Finish>> finished;
  const StepStats* stats = nullptr;  // the decode step's stats (null for prefill admissions)
};

struct BatchJob {
  std::uint64_t id = 0;
  GenerateRequest request;  // prompts, max_new_tokens, keep_logits
  SamplingParams sampling;  // with a seed, sequence i samples with seed + i
  planner::Policy policy = planner::Policy::kvpr;
  std::optional<std::int64_t> split;
  std::optional<std::int64_t> host_split;  // nullopt: the engine options' (three-way split)
  std::chrono::steady_clock::time_point accepted_at = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();

  std::atomic<bool> cancelled{false};  // any thread: stop every sequence
  // Any thread: stop one sequence now (a stop string the gateway matched); it leaves the batch
  // before the next step and reports no more tokens.
  void request_stop(std::int64_t index);
  bool stop_requested(std::int64_t index) const;
  std::function<void(const BatchJob&, const JobStep&)> on_step;
  std::function<void(const BatchJob&, const GenerateResult&)> on_done;  // summary (no tokens)
  std::function<void(const BatchJob&, const Error&)> on_error;

  // Kept by the batcher.
  std::atomic<bool> started{false};  // some sequence was admitted
  GenerateResult summary;
  std::int64_t open = 0;  // sequences not finished
  bool failed = false;

 private:
  mutable std::mutex stop_mutex_;
  std::vector<std::int64_t> stopped_;
};

struct BatcherCounters {
  std::uint64_t preemptions = 0;
  std::uint64_t cancellations = 0;  // sequences stopped by a cancel
};

class Batcher {
 public:
  Batcher(const DeviceModel& model, kernels::Backend& backend, kvstore::KvStoreClient& store,
          planner::Planner& planner, BatcherOptions options);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues a job's sequences. A job that can never fit the store fails at once (on_error).
  void submit(const std::shared_ptr<BatchJob>& job);
  // Drops cancelled and expired work, admits what fits, runs one decode step, reports. Returns
  // false when it could do nothing (idle, or waiting for room in a store other workers fill).
  bool step();
  bool busy() const { return !running_.empty() || !prefilling_.empty() || !waiting_.empty(); }
  // Sequences in the batch: decoding, or part way through a chunked prefill.
  std::size_t running() const { return running_.size() + prefilling_.size(); }
  std::size_t waiting() const { return waiting_.size(); }
  std::size_t waiting_jobs() const;
  const BatcherCounters& counters() const { return counters_; }
  // Called after each decode step with its stats (metrics, traces, profile drift).
  std::function<void(const StepStats&)> on_decode_step;

 private:
  struct Seq;

  class Report;  // the events of one admission pass or decode step, delivered together

  void reap(Report& report);
  bool admit(Report& report);
  bool fits(const Seq& seq, std::uint64_t& free) const;
  void use_engine_of(const BatchJob& job);
  // Prefills up to `budget` more of the sequence's context; true once all of it is cached.
  bool prefill(Seq& seq, std::int64_t budget, Report& report);
  // Scores the prompt tokens a scored chunk's logits rows ([rows, vocab]) predict.
  void score_rows(Seq& seq, const std::vector<float>& logits);
  // Where a sequence goes once a prefill chunk ran: the decode batch, done, or still prefilling.
  void place(std::unique_ptr<Seq> seq, bool complete, Report& report);
  bool decode(Report& report);
  void preempt_youngest();
  // Reports the sequence's next token; `row` (its logits, on the host) when there is one.
  void emit(Seq& seq, const TokenChoice& choice, const float* row, Report& report);
  void drop_job(BatchJob& job, const Error& e);
  void release(Seq& seq);
  std::uint64_t seq_bytes(std::int64_t tokens) const;

  const DeviceModel& model_;
  kernels::Backend& backend_;
  kvstore::KvStoreClient& store_;
  planner::Planner& planner_;
  BatcherOptions options_;

  std::unique_ptr<Engine> engine_;  // for the policy and split of the running batch
  planner::Policy policy_ = planner::Policy::kvpr;
  std::optional<std::int64_t> split_;
  std::optional<std::int64_t> host_split_;

  std::deque<std::unique_ptr<Seq>> waiting_;      // FIFO; preempted sequences go to the front
  std::vector<std::unique_ptr<Seq>> running_;     // in admission order
  std::vector<std::unique_ptr<Seq>> prefilling_;  // admitted, their prompt part way in the cache
  std::int64_t steps_ = 0;
  std::uint64_t admissions_ = 0;
  BatcherCounters counters_;
  kernels::SampleScratch score_scratch_;
};

}  // namespace kvpr::worker
