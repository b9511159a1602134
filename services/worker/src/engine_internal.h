// Private pieces shared by engine.cpp (construction, prefill, layer math) and engine_decode.cpp
// (the decode step: the DecodeSchedule executed on the backend's two queues).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "kvpr/worker/engine.h"

namespace kvpr::worker {

// Host-attention threads one engine may run (the planner wire's bound too).
inline constexpr int kMaxHostThreads = 4096;

// Scratch buffer roles; each role owns one growable device buffer.
enum ScratchRole : std::size_t {
  kX,
  kXn,
  kQ,
  kK,
  kV,
  kAttn,
  kTmp,
  kFfn1,
  kFfn2,
  kProj,
  kLogits,
  kCtxK,  // a prompt chunk's context K,V: the stored [0, t0) then the chunk's own (Engine::extend)
  kCtxV,
  kWriteback,  // then 3 per layer: activation, K, V of the new tokens (the copy queue reads them
               // after compute has moved on to the next layer, so each layer has its own)
};

// Device-held K,V of one sequence, per layer, grown by doubling (policy resident).
struct Engine::Resident {
  struct Layer {
    std::unique_ptr<kernels::DeviceBuffer> k, v;
    std::int64_t capacity = 0;
    std::int64_t length = 0;
  };
  std::vector<Layer> layers;
};

// Staging for one layer in flight: its activations, the K,V recomputed from them, the K,V fetched.
// Filled by the copy queue, read by the compute queue; `free` orders the next fill after the reads.
struct Engine::Slot {
  std::unique_ptr<kernels::DeviceBuffer> act, rk, rv, fk, fv;
  std::vector<std::shared_ptr<kernels::Event>> chunks;  // chunk c's activation rows have landed
  std::shared_ptr<kernels::Event> kv_landed;
  std::shared_ptr<kernels::Event> free;         // compute is done reading this slot
  std::shared_ptr<kernels::Event> fetch_began;  // tracing: the copy queue started this fill
};

// Records the backend events that bound each op of a step and turns them into TraceSpans once
// the step has drained (events can only be read when complete).
class Engine::Tracer {
 public:
  explicit Tracer(kernels::Backend& backend);
  std::shared_ptr<kernels::Event> mark(kernels::Queue queue) { return backend_.record(queue); }
  void add(const char* op, kernels::Queue queue, std::int32_t layer, std::int32_t chunk,
           std::shared_ptr<kernels::Event> begin, std::shared_ptr<kernels::Event> end);
  std::vector<TraceSpan> finish();  // after the queues have drained

 private:
  struct Pending {
    TraceSpan span;
    std::shared_ptr<kernels::Event> begin, end;
  };
  kernels::Backend& backend_;
  std::shared_ptr<kernels::Event> start_;
  std::vector<Pending> pending_;
};

// The running decode step.
struct Engine::Step {
  std::optional<planner::DecodeSchedule> schedule;
  std::vector<SeqHandle> seqs;
  std::vector<std::int32_t> positions;  // of the new tokens (= each sequence's length s)
  std::span<const std::int32_t> tokens;
  bool resident = false;
  planner::Plan plan;
  kernels::Tensor x, q, attn;        // [b, h]
  kernels::Tensor xn, k_new, v_new;  // this layer's new rows (written back by the copy queue)
  kernels::AttnShape attn_shape;
  std::vector<kernels::AttnSegment> segments;
  bool host = false;                             // some tokens are attended on the host
  kernels::Tensor stats, partials;               // fp32, when host
  std::shared_ptr<kernels::Event> query_landed;  // the host threads wait for it
  std::vector<kvstore::HostSpan> spans;          // the (sequence, part) range being fetched
  std::size_t next_span = 0;
  std::map<SeqHandle, std::int64_t> resident_before;    // to roll back on error
  std::vector<float>* logits = nullptr;                 // the head's output lands here, or
  std::span<const kernels::RowSampling> sampling;       // is sampled with these numbers
  std::vector<kernels::SampledRow>* sampled = nullptr;  // into here
  std::optional<Tracer> tracer;
  PhaseTimes times;
};

// Adds the wall time of a scope to one phase.
class Engine::Clock {
 public:
  explicit Clock(double& phase) : phase_(phase), start_(std::chrono::steady_clock::now()) {}
  ~Clock() {
    phase_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  Clock(const Clock&) = delete;
  Clock& operator=(const Clock&) = delete;

 private:
  double& phase_;
  std::chrono::steady_clock::time_point start_;
};

// A tensor view of a buffer that is grown (reallocated) when too small.
kernels::Tensor grown(kernels::Backend& backend, std::unique_ptr<kernels::DeviceBuffer>& buffer,
                      std::int64_t rows, std::int64_t cols);

}  // namespace kvpr::worker
