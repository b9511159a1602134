// The kernel backend: what a device can do. Model code is written against this interface only and
// never asks which backend it holds (CPU reference, CUDA).
//
// Execution model (that of CUDA streams): a backend has two in-order queues, `compute` and `copy`.
// Work enqueued on one queue runs in order; work on different queues may overlap. An Event recorded
// on a queue completes when everything enqueued on that queue before it has run; `wait(q, e)` makes
// later work on q wait for e. Host pointers passed to copies must stay valid until the copy's queue
// has passed them (record an event, or `synchronize`). Operations that return values to the host
// (`argmax`, `read`) synchronise the compute queue.
//
// Tensors are non-owning views of device memory: row-major, contiguous rows of `cols` elements.
// Compute ops take tensors in the backend's compute dtype (the CPU backend computes in fp32 only).
// Every op's arguments are checked once, by the interface itself (op_checks.h), before the backend
// sees them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvpr/common/dtype.h"
#include "kvpr/kernels/row_sampling.h"

namespace kvpr::kernels {

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;

  std::int64_t numel() const { return rows * cols; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * size_of(dtype); }
  // Rows [r0, r0 + n) of this tensor.
  Tensor rows_slice(std::int64_t r0, std::int64_t n) const;
  // The same memory seen as [rows', cols'] with rows'·cols' == numel().
  Tensor reshaped(std::int64_t new_rows, std::int64_t new_cols) const;
};

// Owner of one device allocation; freed in the destructor.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() const = 0;
  virtual std::size_t bytes() const = 0;
  // The whole buffer, or its first rows·cols elements, seen as a tensor.
  Tensor tensor(DType dtype, std::int64_t rows, std::int64_t cols) const;
};

class Event {
 public:
  virtual ~Event() = default;
};

enum class Queue { compute, copy };

enum class Act { relu, gelu, silu };

// One K,V segment that a query attends to: rows of width n_kv_heads·head_dim.
struct AttnSegment {
  std::int64_t query = 0;  // row of q / out this segment belongs to
  Tensor k;                // [n_tokens, h_kv]
  Tensor v;                // [n_tokens, h_kv]
};

struct AttnShape {
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;  // query head i reads KV head i / (n_heads / n_kv_heads)
  std::int64_t head_dim = 0;
  float scale = 1.0f;  // applied to q·k
};

// Rates the backend believes it has, before anything is measured (used by `--split auto`).
struct NominalRates {
  double h2d_bytes_per_s = 0;  // host→device copy bandwidth
  double gemm_flops_per_s = 0;
};

// Counters of the copy queue, for phase timings and benchmarks.
struct CopyStats {
  std::uint64_t h2d_bytes = 0;  // host-side bytes read by host→device copies
  std::uint64_t d2h_bytes = 0;  // host-side bytes written by device→host copies
  std::uint64_t copies = 0;
  double busy_s = 0;  // time the copy engine spent copying (including emulated link time)
};

struct MemoryLedger;  // live bytes and budget, shared with the buffers (they may outlive it)

class Backend {
 public:
  Backend();
  virtual ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  virtual std::string name() const = 0;
  // The dtype device tensors hold for compute (fp32 on the CPU backend).
  virtual DType compute_dtype() const = 0;
  virtual NominalRates nominal_rates() const = 0;

  // A device allocation. With a memory budget set, an allocation that would take the backend's
  // live allocations past it fails (ErrorKind::overloaded) naming both numbers.
  std::unique_ptr<DeviceBuffer> alloc(std::size_t bytes);
  // Caps the device memory this backend's live buffers may hold (`--device-memory`); 0 = only
  // what the device has. Buffers allocated before count too.
  void set_memory_budget(std::uint64_t bytes);
  std::uint64_t memory_budget() const;  // 0 = none
  std::uint64_t memory_used() const;    // bytes of live buffers allocated through alloc

  // Makes host memory that copies will read or write directly reachable by the device's copy
  // engine (CUDA: cudaHostRegister). Returns false when the backend will stage such copies through
  // its own pinned buffers instead. The memory must stay mapped until unregister_host.
  virtual bool register_host(void* ptr, std::size_t bytes) {
    (void)ptr;
    (void)bytes;
    return true;
  }
  virtual void unregister_host(void* ptr) { (void)ptr; }

  // --- queues and events ---
  virtual std::shared_ptr<Event> record(Queue queue) = 0;
  virtual void wait(Queue queue, const std::shared_ptr<Event>& event) = 0;
  // Blocks the host until the event has completed.
  virtual void host_wait(const std::shared_ptr<Event>& event) = 0;
  // Seconds between two completed events' completion times.
  virtual double elapsed_s(const std::shared_ptr<Event>& from,
                           const std::shared_ptr<Event>& to) = 0;
  virtual void synchronize() = 0;
  virtual CopyStats copy_stats() const = 0;

  // --- copies (on either queue; host data converted from/to src/dst dtype on the way) ---
  // The copies and compute ops below are the front every caller uses: each checks its arguments
  // (op_checks.h) and only then hands the call to the backend's do_* of the same name, so every
  // backend rejects a bad call with the same message and sees only valid ones.
  // dst.numel() elements are read from `src`, stored as `src_dtype`.
  void copy_to_device(Queue queue, Tensor dst, const void* src, DType src_dtype);
  // src.numel() elements are written to `dst` as `dst_dtype`.
  void copy_to_host(Queue queue, void* dst, DType dst_dtype, Tensor src);
  // Overlapping views are refused, except a copy onto itself, which does nothing.
  void copy_device(Queue queue, Tensor dst, Tensor src);

  // --- compute (on the compute queue; tensors in compute_dtype()) ---
  // y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n]); w in Hugging Face's [out, in] layout.
  void gemm(Tensor x, Tensor w, const Tensor* bias, Tensor y);
  void add(Tensor a, Tensor b, Tensor y);  // elementwise; y may alias a or b
  void mul(Tensor a, Tensor b, Tensor y);  // elementwise; y may alias a or b
  void activation(Act act, Tensor x);      // in place; gelu is the exact erf form
  void layer_norm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor y);
  void rms_norm(Tensor x, Tensor weight, float eps, Tensor y);
  // In place on x[m, n_heads·head_dim]: rotate-half RoPE, row i at positions[i].
  void rope(Tensor x, std::span<const std::int32_t> positions, std::int64_t n_heads,
            std::int64_t head_dim, float theta);
  // y[i] = table[ids[i]]; ids are checked against table.rows.
  void embedding(Tensor table, std::span<const std::int32_t> ids, Tensor y);
  // out[i] = softmax(scale · q[i]·Kᵀ) · V over all segments whose query is i (fp32 softmax).
  // With `stats` ([q.rows, 2·n_heads] F32 whatever the compute dtype), also each (row, head)'s
  // softmax statistics (max score, sum of exp(score − max)) at [row, 2·head] and [row, 2·head + 1],
  // so that attention_merge can fold in a partial attention computed elsewhere.
  void attention(Tensor q, std::span<const AttnSegment> segments, const AttnShape& shape,
                 Tensor out, const Tensor* stats = nullptr);
  // Split-K merge by the log-sum-exp rule: out[i] (with its stats from attention) and a partial
  // attention over other tokens of the same rows, partials [out.rows, n_heads·(head_dim + 2)] F32,
  // per head (max, sum of exp, the head's normalised output); a head whose partial sum is 0 (no
  // tokens) leaves out as it is. out is overwritten with the attention over both token sets.
  void attention_merge(Tensor out, Tensor stats, Tensor partials, const AttnShape& shape);
  // Index of the largest value of each row (first on ties); synchronises.
  std::vector<std::int32_t> argmax(Tensor x);
  // One token per row of logits [rows.size(), vocab], chosen with that row's numbers as
  // row_sampling.h says; only the choices (and the requested top-n) leave the device.
  // Synchronises. Raises Error(failed) for a row with a NaN or no finite maximum.
  std::vector<SampledRow> sample(Tensor logits, std::span<const RowSampling> rows);

 protected:
  virtual std::unique_ptr<DeviceBuffer> do_alloc(std::size_t bytes) = 0;
  // What a backend implements, called only with arguments the checker accepted (shapes, dtypes,
  // index ranges, no forbidden overlap). A backend adds only checks of its own limits (integer
  // ranges of BLAS or of a CUDA grid), as ErrorKind::unimplemented.
  virtual void do_copy_to_device(Queue queue, Tensor dst, const void* src, DType src_dtype) = 0;
  virtual void do_copy_to_host(Queue queue, void* dst, DType dst_dtype, Tensor src) = 0;
  // Never called for a copy onto itself.
  virtual void do_copy_device(Queue queue, Tensor dst, Tensor src) = 0;
  virtual void do_gemm(Tensor x, Tensor w, const Tensor* bias, Tensor y) = 0;
  virtual void do_add(Tensor a, Tensor b, Tensor y) = 0;
  virtual void do_mul(Tensor a, Tensor b, Tensor y) = 0;
  virtual void do_activation(Act act, Tensor x) = 0;
  virtual void do_layer_norm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor y) = 0;
  virtual void do_rms_norm(Tensor x, Tensor weight, float eps, Tensor y) = 0;
  virtual void do_rope(Tensor x, std::span<const std::int32_t> positions, std::int64_t n_heads,
                       std::int64_t head_dim, float theta) = 0;
  virtual void do_embedding(Tensor table, std::span<const std::int32_t> ids, Tensor y) = 0;
  virtual void do_attention(Tensor q, std::span<const AttnSegment> segments, const AttnShape& shape,
                            Tensor out, const Tensor* stats) = 0;
  virtual void do_attention_merge(Tensor out, Tensor stats, Tensor partials,
                                  const AttnShape& shape) = 0;
  virtual std::vector<std::int32_t> do_argmax(Tensor x) = 0;
  virtual std::vector<SampledRow> do_sample(Tensor logits, std::span<const RowSampling> rows) = 0;

 private:
  std::shared_ptr<MemoryLedger> ledger_;
};

}  // namespace kvpr::kernels
