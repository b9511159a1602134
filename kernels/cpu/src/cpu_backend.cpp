// The CPU backend: wires the copy thread (cpu_copy_queue) and the ops (cpu_ops, cpu_attention)
// behind the Backend interface. The compute queue is the caller's thread — an op runs before its
// call returns — so only the copy queue needs events that complete later.
//
// Ownership: CpuBackend owns its CopyQueue (and through it the copy thread) for its whole life;
// buffers it hands out own their memory and may outlive it; events are shared with callers.
// Which thread calls what: every Backend method is called by the owner's thread(s); copy work
// closures run on the copy thread and touch only the memory named by their arguments.
#include "kvpr/kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <thread>

#include "cpu_copy_queue.h"
#include "cpu_ops.h"
#include "kvpr/common/error.h"

namespace kvpr::kernels {
namespace cpu {
namespace {

// Without an emulated link the "link" is memcpy between two host buffers; 10 GB/s is the order
// of a large single-thread memcpy here and of a PCIe 4 x16 link. Nominal, not measured.
constexpr double kNominalH2dBytesPerS = 10e9;
// Nominal fp32 GEMM rate per compute thread (OpenBLAS measures ~55–70 GFLOP/s on one core here).
constexpr double kNominalGemmFlopsPerThread = 50e9;
constexpr std::size_t kAlignment = 64;

class CpuBuffer final : public DeviceBuffer {
 public:
  explicit CpuBuffer(std::size_t bytes) : bytes_(bytes) {
    // aligned_alloc wants a size that is a multiple of the alignment, and never 0.
    if (bytes <= std::numeric_limits<std::size_t>::max() - kAlignment) {
      const std::size_t padded =
          std::max(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
      data_ = std::aligned_alloc(kAlignment, padded);
    }
    if (data_ == nullptr) {
      raise(ErrorKind::overloaded, "cpu alloc: no host memory for ", bytes, " bytes");
    }
  }
  ~CpuBuffer() override { std::free(data_); }
  CpuBuffer(const CpuBuffer&) = delete;
  CpuBuffer& operator=(const CpuBuffer&) = delete;

  void* data() const override { return data_; }
  std::size_t bytes() const override { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

std::shared_ptr<CpuEvent> as_cpu_event(std::string_view op, const std::shared_ptr<Event>& event) {
  if (event == nullptr) fail(op, ": the event is null");
  auto cpu_event = std::dynamic_pointer_cast<CpuEvent>(event);
  if (cpu_event == nullptr) fail(op, ": the event was not recorded by a CPU backend");
  return cpu_event;
}

// The compute thread count the options ask for, after checking all options (before the copy
// thread starts).
int checked_threads(const BackendOptions& options) {
  if (!(options.emulate_link_gbps >= 0) || !(options.emulate_link_latency_s >= 0)) {
    fail("cpu backend: emulated link of ", options.emulate_link_gbps, " GB/s and latency ",
         options.emulate_link_latency_s, " s is not a non-negative setting");
  }
  if (options.threads < 0) fail("cpu backend: threads ", options.threads, " is negative");
  if (options.threads > 0) return options.threads;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options)
      : threads_(checked_threads(options)),
        link_{options.emulate_link_gbps * 1e9, options.emulate_link_latency_s},
        copy_queue_(link_) {
    // Process-wide: OpenBLAS has one thread pool, so the last backend created sets it.
    if (options.threads > 0) openblas_set_num_threads(options.threads);
  }

  std::string name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::f32; }

  NominalRates nominal_rates() const override {
    NominalRates rates;
    rates.h2d_bytes_per_s = link_.bytes_per_s > 0 ? link_.bytes_per_s : kNominalH2dBytesPerS;
    rates.gemm_flops_per_s = kNominalGemmFlopsPerThread * threads_;
    return rates;
  }

  std::unique_ptr<DeviceBuffer> do_alloc(std::size_t bytes) override {
    return std::make_unique<CpuBuffer>(bytes);
  }

  std::shared_ptr<Event> record(Queue queue) override {
    if (queue == Queue::copy) return copy_queue_.enqueue_marker();
    auto event = std::make_shared<CpuEvent>();
    event->complete();  // the compute queue has already run everything enqueued on it
    return event;
  }

  void wait(Queue queue, const std::shared_ptr<Event>& event) override {
    auto cpu_event = as_cpu_event("wait", event);
    if (queue == Queue::copy) {
      copy_queue_.enqueue_wait(std::move(cpu_event));
    } else {
      cpu_event->wait();  // the compute queue is this thread
    }
    copy_queue_.rethrow_error();
  }

  void host_wait(const std::shared_ptr<Event>& event) override {
    as_cpu_event("host_wait", event)->wait();
    copy_queue_.rethrow_error();
  }

  double elapsed_s(const std::shared_ptr<Event>& from, const std::shared_ptr<Event>& to) override {
    const auto a = as_cpu_event("elapsed_s", from);
    const auto b = as_cpu_event("elapsed_s", to);
    if (!a->done() || !b->done()) {
      fail("elapsed_s: an event has not completed yet (host_wait first)");
    }
    return std::chrono::duration<double>(b->completed_at() - a->completed_at()).count();
  }

  void synchronize() override { copy_queue_.drain(); }

  // Bytes and counts include copies run on the compute queue; busy_s is the copy thread's alone.
  CopyStats copy_stats() const override { return copy_queue_.stats(); }

  // --- the ops, called by Backend's checking front (backend.h) with checked arguments ---
 protected:
  void do_copy_to_device(Queue queue, Tensor dst, const void* src, DType src_dtype) override {
    const auto n = static_cast<std::size_t>(dst.numel());
    submit(queue, CopyKind::host_to_device, n * size_of(src_dtype), [dst, src, src_dtype, n] {
      if (n > 0) convert(src, src_dtype, dst.data, dst.dtype, n);
    });
  }

  void do_copy_to_host(Queue queue, void* dst, DType dst_dtype, Tensor src) override {
    const auto n = static_cast<std::size_t>(src.numel());
    submit(queue, CopyKind::device_to_host, n * size_of(dst_dtype), [dst, dst_dtype, src, n] {
      if (n > 0) convert(src.data, src.dtype, dst, dst_dtype, n);
    });
  }

  void do_copy_device(Queue queue, Tensor dst, Tensor src) override {
    const auto n = static_cast<std::size_t>(src.numel());
    submit(queue, CopyKind::device_to_device, 0, [dst, src, n] {
      if (n > 0) convert(src.data, src.dtype, dst.data, dst.dtype, n);
    });
  }

  void do_gemm(Tensor x, Tensor w, const Tensor* bias, Tensor y) override {
    cpu::gemm(x, w, bias, y);
  }
  void do_add(Tensor a, Tensor b, Tensor y) override { cpu::add(a, b, y); }
  void do_mul(Tensor a, Tensor b, Tensor y) override { cpu::mul(a, b, y); }
  void do_activation(Act act, Tensor x) override { cpu::activation(act, x); }
  void do_layer_norm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor y) override {
    cpu::layer_norm(x, weight, bias, eps, y);
  }
  void do_rms_norm(Tensor x, Tensor weight, float eps, Tensor y) override {
    cpu::rms_norm(x, weight, eps, y);
  }
  void do_rope(Tensor x, std::span<const std::int32_t> positions, std::int64_t n_heads,
               std::int64_t head_dim, float theta) override {
    cpu::rope(x, positions, n_heads, head_dim, theta);
  }
  void do_embedding(Tensor table, std::span<const std::int32_t> ids, Tensor y) override {
    cpu::embedding(table, ids, y);
  }
  void do_attention(Tensor q, std::span<const AttnSegment> segments, const AttnShape& shape,
                    Tensor out, const Tensor* stats) override {
    cpu::attention(q, segments, shape, out, stats);
  }
  void do_attention_merge(Tensor out, Tensor stats, Tensor partials,
                          const AttnShape& shape) override {
    cpu::attention_merge(out, stats, partials, shape);
  }
  std::vector<std::int32_t> do_argmax(Tensor x) override { return cpu::argmax(x); }
  std::vector<SampledRow> do_sample(Tensor logits, std::span<const RowSampling> rows) override {
    std::vector<SampledRow> out;
    out.reserve(rows.size());
    const auto* data = static_cast<const float*>(logits.data);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const std::span<const float> row(data + static_cast<std::int64_t>(r) * logits.cols,
                                       static_cast<std::size_t>(logits.cols));
      out.push_back(sample_row(row, rows[r], sample_scratch_));
    }
    return out;
  }

 private:
  // Copies on the compute queue run here and now; on the copy queue, on the copy thread.
  template <typename Work>
  void submit(Queue queue, CopyKind kind, std::uint64_t host_bytes, Work work) {
    if (queue == Queue::copy) {
      copy_queue_.enqueue_copy(kind, host_bytes, std::move(work));
    } else {
      work();
      copy_queue_.count_sync_copy(kind, host_bytes);
    }
  }

  const int threads_;
  const LinkEmulation link_;
  SampleScratch sample_scratch_;  // reused by do_sample (one thread drives a backend)
  CopyQueue copy_queue_;          // last: its thread stops (draining) before anything above goes
};

}  // namespace
}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options) {
  return std::make_unique<cpu::CpuBackend>(options);
}

}  // namespace kvpr::kernels
