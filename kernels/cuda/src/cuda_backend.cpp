// The CUDA backend: the Backend interface on one device. This file only wires — the device's own
// limits (int ranges, grid sizes, attention_plan.h) on top of the arguments Backend's front has
// checked (op_checks.h), one launcher per op (the .cu/.cuh pairs), the copy lanes and
// the upload ring (cuda_device.h) — so that each piece can be read on its own.
//
// Queues: Queue::compute and Queue::copy are two CUDA streams; record/wait are cudaEventRecord and
// cudaStreamWaitEvent, host_wait is cudaEventSynchronize, elapsed_s is cudaEventElapsedTime (events
// are created with timing). Every op runs on the compute stream and returns once enqueued; argmax
// synchronises it to hand back indices. Copies run on the queue they are given.
//
// Ownership: the backend and every buffer it hands out share one Device (streams, cuBLAS, lanes);
// events are shared with callers and only hold a CUDA event. A failed CUDA call throws one
// kvpr::Error line naming the call; an asynchronous kernel fault surfaces at the next
// synchronising call (host_wait, synchronize, argmax) the same way.
#include "kvpr/kernels/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "activation.cuh"
#include "argmax.cuh"
#include "attention.cuh"
#include "attention_plan.h"
#include "binary.cuh"
#include "cuda_check.h"
#include "cuda_device.h"
#include "embedding.cuh"
#include "gemm.cuh"
#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/kernels/op_checks.h"
#include "layer_norm.cuh"
#include "rms_norm.cuh"
#include "rope.cuh"
#include "sample.cuh"

namespace kvpr::kernels {
namespace cuda {
namespace {

class CudaEvent final : public Event {
 public:
  CudaEvent() : handle_(true) {}
  cudaEvent_t get() const { return handle_.get(); }

 private:
  EventHandle handle_;
};

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(std::shared_ptr<Device> device, std::size_t bytes)
      : device_(std::move(device)), data_(device_->allocate(bytes)), bytes_(bytes) {}
  ~CudaBuffer() override { device_->release(data_); }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  void* data() const override { return data_; }
  std::size_t bytes() const override { return bytes_; }

 private:
  std::shared_ptr<Device> device_;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

const CudaEvent& as_cuda_event(std::string_view op, const std::shared_ptr<Event>& event) {
  if (event == nullptr) fail(op, ": the event is null");
  const auto* cuda_event = dynamic_cast<const CudaEvent*>(event.get());
  if (cuda_event == nullptr) fail(op, ": the event was not recorded by a CUDA backend");
  return *cuda_event;
}

// Row kernels launch one block per row: rows must fit the grid (2³¹ − 1).
void check_grid_rows(std::string_view op, std::string_view what, std::int64_t rows) {
  if (rows > std::numeric_limits<std::int32_t>::max()) {
    raise(ErrorKind::unimplemented, op, ": ", what, " has ", rows,
          " rows, more than one CUDA grid dimension holds");
  }
}

// Nominal rates before anything is measured (for `--split auto`): PCIe 5 x16 (H100/H200 class)
// or PCIe 4 x16 for the link, and half of the SMs' peak for the recompute GEMM — fp32 on CUDA
// cores (no TF32), fp16/bf16 on tensor cores. Nominal, not measured: the planner's profile and
// kvpr-bench-decode measure the real ones.
NominalRates nominal(const DeviceInfo& info, DType dtype) {
  NominalRates rates;
  rates.h2d_bytes_per_s = info.cc_major >= 9 ? 50e9 : 25e9;
  const double clock_hz = static_cast<double>(info.clock_khz) * 1e3;
  const double per_sm_per_clock =
      dtype == DType::f32 ? 256.0 : (info.cc_major >= 9 ? 4096.0 : 2048.0);
  rates.gemm_flops_per_s = 0.5 * info.sm_count * clock_hz * per_sm_per_clock;
  return rates;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int ordinal, DType compute_dtype)
      : device_(std::make_shared<Device>(ordinal)), dtype_(compute_dtype) {}

  ~CudaBackend() override {
    try {
      device_->synchronize();
    } catch (const std::exception& e) {  // a destructor never throws
      log::error("cuda backend: at shutdown: ", e.what());
    }
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  DType compute_dtype() const override { return dtype_; }
  NominalRates nominal_rates() const override { return nominal(device_->info(), dtype_); }

  std::unique_ptr<DeviceBuffer> do_alloc(std::size_t bytes) override {
    return std::make_unique<CudaBuffer>(device_, bytes);
  }

  bool register_host(void* ptr, std::size_t bytes) override {
    return device_->registry().add(ptr, bytes);
  }

  // A pointer that was never registered (register_host returned false) is ignored.
  void unregister_host(void* ptr) override {
    device_->synchronize();  // no copy may still be reading or writing the range
    device_->registry().remove(ptr);
  }

  // --- queues and events ---
  std::shared_ptr<Event> record(Queue queue) override {
    device_->lane(queue).end_run();
    auto event = std::make_shared<CudaEvent>();
    check(cudaEventRecord(event->get(), device_->stream(queue)), "cudaEventRecord");
    return event;
  }

  void wait(Queue queue, const std::shared_ptr<Event>& event) override {
    const CudaEvent& e = as_cuda_event("wait", event);
    device_->lane(queue).end_run();
    check(cudaStreamWaitEvent(device_->stream(queue), e.get(), 0), "cudaStreamWaitEvent");
  }

  void host_wait(const std::shared_ptr<Event>& event) override {
    check(cudaEventSynchronize(as_cuda_event("host_wait", event).get()), "cudaEventSynchronize");
  }

  double elapsed_s(const std::shared_ptr<Event>& from, const std::shared_ptr<Event>& to) override {
    const CudaEvent& a = as_cuda_event("elapsed_s", from);
    const CudaEvent& b = as_cuda_event("elapsed_s", to);
    float ms = 0;
    const cudaError_t err = cudaEventElapsedTime(&ms, a.get(), b.get());
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();
      fail("elapsed_s: an event has not completed yet (host_wait first)");
    }
    check(err, "cudaEventElapsedTime");
    return static_cast<double>(ms) * 1e-3;
  }

  void synchronize() override { device_->synchronize(); }
  CopyStats copy_stats() const override { return device_->copy_stats(); }

  // --- the ops, called by Backend's checking front (backend.h) with checked arguments ---
 protected:
  void do_copy_to_device(Queue queue, Tensor dst, const void* src, DType src_dtype) override {
    device_->lane(queue).to_device(dst.data, dst.dtype, src, src_dtype,
                                   static_cast<std::size_t>(dst.numel()));
  }

  void do_copy_to_host(Queue queue, void* dst, DType dst_dtype, Tensor src) override {
    device_->lane(queue).to_host(dst, dst_dtype, src.data, src.dtype,
                                 static_cast<std::size_t>(src.numel()));
  }

  void do_copy_device(Queue queue, Tensor dst, Tensor src) override {
    device_->lane(queue).on_device(dst.data, dst.dtype, src.data, src.dtype,
                                   static_cast<std::size_t>(src.numel()));
  }

  void do_gemm(Tensor x, Tensor w, const Tensor* bias, Tensor y) override {
    const std::int64_t m = x.rows;
    const std::int64_t k = x.cols;
    const std::int64_t n = w.rows;
    check_dims_fit("gemm", {{"m", m}, {"n", n}, {"k", k}}, std::numeric_limits<int>::max(),
                   "cuBLAS's int range");
    launch_gemm(device_->blas(), compute(), dtype_, x.data, w.data,
                bias != nullptr ? bias->data : nullptr, y.data, m, n, k);
  }

  void do_add(Tensor a, Tensor b, Tensor y) override {
    launch_binary(compute(), BinaryOp::add, dtype_, a.data, b.data, y.data, a.numel());
  }
  void do_mul(Tensor a, Tensor b, Tensor y) override {
    launch_binary(compute(), BinaryOp::mul, dtype_, a.data, b.data, y.data, a.numel());
  }

  void do_activation(Act act, Tensor x) override {
    launch_activation(compute(), act, dtype_, x.data, x.numel());
  }

  void do_layer_norm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor y) override {
    check_grid_rows("layer_norm", "x", x.rows);
    launch_layer_norm(compute(), dtype_, x.data, weight.data, bias.data, eps, y.data, x.rows,
                      x.cols);
  }

  void do_rms_norm(Tensor x, Tensor weight, float eps, Tensor y) override {
    check_grid_rows("rms_norm", "x", x.rows);
    launch_rms_norm(compute(), dtype_, x.data, weight.data, eps, y.data, x.rows, x.cols);
  }

  void do_rope(Tensor x, std::span<const std::int32_t> positions, std::int64_t n_heads,
               std::int64_t head_dim, float theta) override {
    if (x.rows == 0) return;
    // One upload: positions, padded to 8 bytes, then inv_freq computed as the CPU reference does.
    const std::int64_t half = head_dim / 2;
    const std::size_t pos_bytes = (positions.size() * sizeof(std::int32_t) + 7) / 8 * 8;
    std::vector<std::byte> blob(pos_bytes + static_cast<std::size_t>(half) * sizeof(float));
    std::memcpy(blob.data(), positions.data(), positions.size() * sizeof(std::int32_t));
    for (std::int64_t i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      const float inv_freq = 1.0f / std::pow(theta, exponent);
      std::memcpy(blob.data() + pos_bytes + static_cast<std::size_t>(i) * sizeof(float), &inv_freq,
                  sizeof(float));
    }
    auto* device = static_cast<std::byte*>(device_->args().upload(blob.data(), blob.size()));
    launch_rope(compute(), dtype_, x.data, reinterpret_cast<const std::int32_t*>(device),
                reinterpret_cast<const float*>(device + pos_bytes), x.rows, n_heads, head_dim);
  }

  void do_embedding(Tensor table, std::span<const std::int32_t> ids, Tensor y) override {
    if (y.numel() == 0) return;
    const void* device = device_->args().upload(ids.data(), ids.size() * sizeof(std::int32_t));
    launch_embedding(compute(), dtype_, table.data, static_cast<const std::int32_t*>(device),
                     y.data, y.rows, y.cols);
  }

  void do_attention(Tensor q, std::span<const AttnSegment> segments, const AttnShape& shape,
                    Tensor out, const Tensor* stats) override {
    const AttnPlan plan = plan_attention(q, segments, shape, device_->info().sm_count);
    if (q.rows == 0) return;
    const std::vector<std::byte> blob = plan.pack();
    auto* device = static_cast<const std::byte*>(device_->args().upload(blob.data(), blob.size()));
    AttnArgs args;
    args.q = q.data;
    args.out = out.data;
    args.segs = reinterpret_cast<const AttnSegDesc*>(device);
    args.query_first = reinterpret_cast<const std::int64_t*>(device + plan.query_first_offset());
    args.n_queries = q.rows;
    args.n_heads = shape.n_heads;
    args.group = shape.n_heads / shape.n_kv_heads;
    args.head_dim = shape.head_dim;
    args.n_splits = plan.n_splits;
    args.split_tokens = plan.split_tokens;
    args.scale = shape.scale;
    args.stats = stats ? static_cast<float*>(stats->data) : nullptr;
    StreamAllocation partials;  // freed in stream order after the kernels
    if (const std::size_t bytes = attention_partial_bytes(args); bytes > 0) {
      partials = StreamAllocation(bytes, compute());
      args.partial_acc = static_cast<float*>(partials.data());
      args.partial_ml = reinterpret_cast<float*>(static_cast<std::byte*>(partials.data()) +
                                                 attention_partial_ml_offset(args));
    }
    launch_attention(compute(), dtype_, args);
  }

  void do_attention_merge(Tensor out, Tensor stats, Tensor partials,
                          const AttnShape& shape) override {
    check_grid_rows("attention_merge", "out", out.rows);
    if (out.rows == 0) return;
    launch_attention_merge(compute(), dtype_, out.data, static_cast<const float*>(stats.data),
                           static_cast<const float*>(partials.data), out.rows, shape.n_heads,
                           shape.head_dim);
  }

  std::vector<std::int32_t> do_argmax(Tensor x) override {
    check_grid_rows("argmax", "x", x.rows);
    std::vector<std::int32_t> result(static_cast<std::size_t>(x.rows));
    if (x.rows == 0) return result;
    const std::size_t bytes = result.size() * sizeof(std::int32_t);
    StreamAllocation indices(bytes, compute());
    launch_argmax(compute(), dtype_, x.data, x.rows, x.cols,
                  static_cast<std::int32_t*>(indices.data()));
    if (argmax_host_.bytes() < bytes) argmax_host_ = PinnedMemory(bytes);
    check(cudaMemcpyAsync(argmax_host_.data(), indices.data(), bytes, cudaMemcpyDeviceToHost,
                          compute()),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(compute()), "cudaStreamSynchronize(compute)");
    std::memcpy(result.data(), argmax_host_.data(), bytes);
    return result;
  }

  std::vector<SampledRow> do_sample(Tensor logits, std::span<const RowSampling> rows) override {
    check_grid_rows("sample", "logits", logits.rows);
    // The rows' numbers and their penalties, uploaded together: args, then tokens, then values.
    std::vector<SampleRowArgs> args(rows.size());
    std::vector<std::int32_t> tokens;
    std::vector<float> values;
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const RowSampling& p = rows[r];
      args[r] = {p.temperature,
                 p.top_p,
                 p.top_k,
                 p.u,
                 p.logprobs,
                 static_cast<std::int32_t>(tokens.size()),
                 static_cast<std::int32_t>(p.penalties.size())};
      for (const auto& [token, penalty] : p.penalties) {
        tokens.push_back(token);
        values.push_back(penalty);
      }
    }
    const std::size_t args_bytes = args.size() * sizeof(SampleRowArgs);
    const std::size_t tokens_bytes = tokens.size() * sizeof(std::int32_t);
    std::vector<std::byte> blob(args_bytes + 2 * tokens_bytes);
    std::memcpy(blob.data(), args.data(), args_bytes);
    if (!tokens.empty()) {
      std::memcpy(blob.data() + args_bytes, tokens.data(), tokens_bytes);
      std::memcpy(blob.data() + args_bytes + tokens_bytes, values.data(), tokens_bytes);
    }
    auto* device = static_cast<const std::byte*>(device_->args().upload(blob.data(), blob.size()));
    const std::size_t out_bytes = rows.size() * sizeof(SampleRowOut);
    StreamAllocation z(static_cast<std::size_t>(logits.numel()) * sizeof(float), compute());
    StreamAllocation out(out_bytes, compute());
    launch_sample(compute(), dtype_, logits.data, logits.rows, logits.cols,
                  reinterpret_cast<const SampleRowArgs*>(device),
                  reinterpret_cast<const std::int32_t*>(device + args_bytes),
                  reinterpret_cast<const float*>(device + args_bytes + tokens_bytes),
                  static_cast<float*>(z.data()), static_cast<SampleRowOut*>(out.data()));
    if (sample_host_.bytes() < out_bytes) sample_host_ = PinnedMemory(out_bytes);
    check(cudaMemcpyAsync(sample_host_.data(), out.data(), out_bytes, cudaMemcpyDeviceToHost,
                          compute()),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(compute()), "cudaStreamSynchronize(compute)");
    std::vector<SampleRowOut> got(rows.size());
    std::memcpy(got.data(), sample_host_.data(), out_bytes);
    std::vector<SampledRow> result(rows.size());
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const SampleRowOut& o = got[r];
      switch (o.status) {
        case SampleStatus::nan:
          fail("sampler: the logit of token ", o.bad_token, " is NaN");
        case SampleStatus::no_finite_max:
          fail("sampler: the logits row has no finite maximum (", o.max, ")");
        case SampleStatus::no_finite_z:
          fail("sampler: the penalised logits have no finite maximum");
        case SampleStatus::ok:
          break;
      }
      result[r].token = o.token;
      result[r].logprob = o.logprob;
      const auto n = std::min<std::int64_t>(rows[r].logprobs, logits.cols);
      for (std::int64_t i = 0; i < n; ++i)
        result[r].top.emplace_back(o.top_token[i], o.top_logprob[i]);
    }
    return result;
  }

 private:
  cudaStream_t compute() const { return device_->stream(Queue::compute); }

  std::shared_ptr<Device> device_;
  DType dtype_;
  PinnedMemory argmax_host_;  // argmax's landing buffer; reused, the call synchronises
  PinnedMemory sample_host_;  // sample's, likewise
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    raise(ErrorKind::unimplemented, "backend 'cuda': no usable CUDA device (cudaGetDeviceCount: ",
          err == cudaSuccess ? "0 devices" : cudaGetErrorString(err),
          err == cudaSuccess ? "" : str(", ", cudaGetErrorName(err)), ")");
  }
  if (options.emulate_link_gbps != 0 || options.emulate_link_latency_s != 0) {
    raise(ErrorKind::unimplemented,
          "backend 'cuda': the emulated link (--emulate-link-*) is a CPU-backend option; the CUDA "
          "backend uses the real one");
  }
  return std::make_unique<cuda::CudaBackend>(0, options.compute_dtype);
}

}  // namespace kvpr::kernels
