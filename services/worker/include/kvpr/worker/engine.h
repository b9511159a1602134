// The runtime of one worker: prefill writes every layer's attention-input activations and K,V to
// the host KV store; decode steps run a batch of sequences of different lengths under a KV policy
// (see planner::Policy), fetching and recomputing each layer's K,V on the backend's two queues, and
// write the new token's activation and K,V back every step.
//
// Threading: one caller thread drives an Engine; the backend's copy queue runs beside it. An
// Engine owns its device work buffers and the resident K,V of its sequences; the host store and
// the planner are borrowed and must outlive it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kvpr/kernels/backend.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "kvpr/planner/decode_schedule.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/host_attention.h"
#include "kvpr/worker/weight_stream.h"

namespace kvpr::worker {

struct EngineOptions {
  planner::Policy policy = planner::Policy::kvpr;
  std::optional<std::int64_t> split;  // fixed l; nullopt = ask the planner (`--split auto`)
  bool trace = false;  // record each decode step's spans per queue (StepStats::trace)
  // Host attention from m on ([m, s) on the host; `--split L:M`); nullopt = the planner's m.
  std::optional<std::int64_t> host_split = std::nullopt;
  int host_threads = 1;  // threads of the host-attention pool (`--host-threads`)
  // Throughput mode's block schedule: a decode step's batch runs as this many micro-batches of
  // consecutive sequences (sizes differ by at most one; capped at the batch), each layer once per
  // micro-batch while its weights are loaded (decode_schedule.h). 1: the latency schedule.
  std::int64_t micro_batches = 1;
};

// Seconds spent per phase. transfer is the copy queue's busy time, which overlaps the compute
// phases; idle is time the compute queue waited for data; total is wall time.
struct PhaseTimes {
  double transfer = 0;
  double recompute = 0;
  double attention = 0;
  double other = 0;
  double idle = 0;
  double host_attention = 0;  // host threads attending over [m, s) (overlaps the device)
  double total = 0;
  PhaseTimes& operator+=(const PhaseTimes& o);
};

// One span of work on a backend queue during a decode step, from the backend's events, in seconds
// from the step's start. `op` names the schedule op (decode_schedule.h); fetches of a layer are
// one span per activation chunk ("fetch_act", chunk) and one for the K,V ("fetch_kv").
struct TraceSpan {
  const char* op = "";
  kernels::Queue queue = kernels::Queue::compute;
  std::int32_t layer = -1;
  std::int32_t chunk = -1;
  double begin_s = 0;
  double end_s = 0;
};

struct StepStats {
  std::chrono::steady_clock::time_point started;
  PhaseTimes times;
  std::int64_t recompute_tokens = 0;  // K,V rows rebuilt from activations (all layers)
  std::int64_t transfer_tokens = 0;   // K,V rows fetched from host (all layers)
  std::int64_t host_tokens = 0;       // K,V rows attended on the host (all layers)
  std::uint64_t h2d_bytes = 0;
  std::uint64_t d2h_bytes = 0;
  planner::Plan plan;
  std::vector<std::int64_t> s;      // each sequence's context length before the step
  std::vector<std::int64_t> micro;  // micro-batch sizes of the block schedule (one: the batch)
  double weight_bytes = 0;          // host bytes of weights streamed per layer (0: all resident)
  std::vector<TraceSpan> trace;     // when EngineOptions::trace
};

using SeqHandle = kvstore::SeqId;

// Device bytes an engine's own buffers may grow to for `batch` sequences of up to `context` tokens
// in `micro_batches` micro-batches (prompts prefilled whole): the staging slots, the scratch of a
// prompt and of a step, every layer's write-back rows. An upper estimate, for sizing the weights'
// share under a memory budget (WeightPlacement::reserve_bytes).
std::uint64_t working_set_bytes(const ModelConfig& c, std::int64_t batch, std::int64_t context,
                                std::int64_t micro_batches, DType dtype);

// A prompt's next token, chosen on the device (Engine::prefill / extend without logits).
struct PromptChoice {
  kernels::RowSampling sampling;
  kernels::SampledRow chosen;
};

// What a prompt's run hands back (Engine::prefill / extend): logits (the last row's, or every
// row's), a next token chosen where the logits are (Backend::sample with choice->sampling's
// numbers, into choice->chosen; no logits row leaves the device), or nothing (both null: nothing
// runs past the last layer, for a chunk before the prompt's last or a preempted sequence's
// rebuild).
struct PromptOut {
  std::vector<float>* logits = nullptr;
  bool all_logits = false;
  PromptChoice* choice = nullptr;
};

class Engine {
 public:
  Engine(const DeviceModel& model, kernels::Backend& backend, kvstore::KvStoreClient& store,
         planner::Planner& planner, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs the prompt through the model and stores its activations and K,V. Returns the handle;
  // `logits` receives [n, vocab] row-major when all_logits, else the last row [vocab].
  SeqHandle prefill(std::span<const std::int32_t> tokens, std::vector<float>& logits,
                    bool all_logits = false);
  // Prefills more of a sequence's prompt (chunked prefill): tokens at positions [length, length +
  // n) attend to the stored context and to each other. `logits` receives the last row ([n, vocab]
  // when all_logits). On error nothing is committed and the sequence is as it was.
  void extend(SeqHandle seq, std::span<const std::int32_t> tokens, std::vector<float>& logits,
              bool all_logits = false);
  // The same two with what comes back said by `out`.
  SeqHandle prefill(std::span<const std::int32_t> tokens, PromptOut out);
  void extend(SeqHandle seq, std::span<const std::int32_t> tokens, PromptOut out);

  // One decode step: tokens[i] is fed to seqs[i] at position length(seqs[i]). Returns logits
  // [b, vocab] row-major. On error nothing is committed: the step can be retried.
  std::vector<float> decode(std::span<const SeqHandle> seqs, std::span<const std::int32_t> tokens);
  // The same step, with each sequence's next token chosen where the logits are (Backend::sample,
  // with sampling[i]'s numbers): only the choices leave the device.
  std::vector<kernels::SampledRow> decode_sampled(std::span<const SeqHandle> seqs,
                                                  std::span<const std::int32_t> tokens,
                                                  std::span<const kernels::RowSampling> sampling);

  // K and V of tokens [0, s) of one layer exactly as a decode step under this engine's policy
  // would see them (rows [0, l) recomputed from activations, [l, s) fetched), as [s, h_kv] each.
  void materialize_kv(SeqHandle seq, std::int64_t layer, std::int64_t l, std::vector<float>& k,
                      std::vector<float>& v);

  void release(SeqHandle seq);
  // Rolls a sequence back to its first n tokens (device-resident K,V too).
  void truncate(SeqHandle seq, std::int64_t n_tokens);
  std::int64_t length(SeqHandle seq) const { return store_.length(seq); }

  const StepStats& last_step() const { return last_; }
  const ModelConfig& config() const { return model_.config(); }
  const EngineOptions& options() const { return options_; }

 private:
  struct Resident;  // device-held K,V of one sequence (policy resident)
  struct Slot;      // staging buffers of one layer in flight
  struct Step;      // the running decode step: its schedule, batch, tensors and timings
  class Clock;
  class Tracer;

  kernels::Tensor scratch(std::size_t index, std::int64_t rows, std::int64_t cols);
  void run_prompt(SeqHandle seq, std::int64_t t0, std::span<const std::int32_t> tokens,
                  PromptOut out);
  void embed(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
             kernels::Tensor x);
  void attention_input(const DeviceLayer& w, kernels::Tensor x, kernels::Tensor xn);
  void qkv(const DeviceLayer& w, kernels::Tensor xn, std::span<const std::int32_t> positions,
           kernels::Tensor q, kernels::Tensor k, kernels::Tensor v);
  // K = RoPE(xn·Wk), V = xn·Wv: the new tokens' K,V and those recomputed from activations.
  void project_kv(const DeviceLayer& w, kernels::Tensor xn, std::span<const std::int32_t> positions,
                  kernels::Tensor k, kernels::Tensor v);
  void attn_out_and_ffn(const DeviceLayer& w, kernels::Tensor attn, kernels::Tensor x);
  void logits(kernels::Tensor x, std::vector<float>& out);
  kernels::Tensor head(kernels::Tensor x);  // the logits of x's rows, on the device
  // One decode step; the logits land in *logits, or their sampled choices in *sampled.
  void run_decode(std::span<const SeqHandle> seqs, std::span<const std::int32_t> tokens,
                  std::span<const kernels::RowSampling> sampling, std::vector<float>* logits,
                  std::vector<kernels::SampledRow>* sampled);
  void write_rows(SeqHandle seq, std::int64_t layer, kvstore::Part part, std::int64_t t0,
                  kernels::Tensor rows, kernels::Queue queue);

  // The decode step's phases (engine_decode.cpp), one per DecodeSchedule op kind.
  void begin_step(Step& step, std::span<const SeqHandle> seqs);
  void size_slots(const planner::DecodeSchedule& schedule);
  void execute(Step& step, const planner::DecodeOp& op);
  void prefetch(Step& step, const planner::DecodeOp& op);
  void fetch_block(Step& step, const planner::DecodeOp& op);
  void project_new_tokens(Step& step, const planner::DecodeOp& op);
  void write_back(Step& step, const planner::DecodeOp& op);
  void recompute(Step& step, const planner::DecodeOp& op);
  void attend(Step& step, const planner::DecodeOp& op);
  // The host third of the split (three-way schedule ops).
  void download_query(Step& step, const planner::DecodeOp& op);
  void host_attend(Step& step, const planner::DecodeOp& op);
  void upload_partials(Step& step, const planner::DecodeOp& op);
  void merge(Step& step, const planner::DecodeOp& op);
  void finish_step(Step& step);
  Slot& slot(std::size_t index);
  void resident_append(SeqHandle seq, std::int64_t layer, kernels::Tensor k, kernels::Tensor v);

  const DeviceModel& model_;
  kernels::Backend& backend_;
  kvstore::KvStoreClient& store_;
  planner::Planner& planner_;
  EngineOptions options_;
  planner::Rates rates_;

  std::vector<std::unique_ptr<kernels::DeviceBuffer>> scratch_;
  std::vector<std::unique_ptr<Slot>> slots_;
  WeightStream weights_;  // streamed weight matrices (throughput mode); no-ops when all resident
  std::map<SeqHandle, std::unique_ptr<Resident>> resident_;
  std::unique_ptr<HostAttention> host_;  // started at the first step with host attention
  std::vector<float> host_q_;            // the query rows on the host, [b, h] fp32
  std::vector<float> host_partials_;     // [b, n_heads·(head_dim + 2)] fp32
  std::unique_ptr<kernels::DeviceBuffer> stats_, partials_;  // their device side (fp32)
  StepStats last_;
};

}  // namespace kvpr::worker
