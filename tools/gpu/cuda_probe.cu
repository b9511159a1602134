// cuda_probe: the device profile that tools/gpu-check records next to the kvpr benchmarks, built
// on the device machine itself with nvcc and cuBLAS only (no library of this project, no Debian
// library), so it runs even when the bundled binaries cannot start there.
//
// Measures, with CUDA events:
//   - host↔device copy bandwidth against transfer size for pageable (malloc), pinned
//     (cudaHostAlloc) and registered (malloc + cudaHostRegister, as kvpr registers its store)
//     host memory — the B(n) curve of DESIGN.md §1;
//   - the cuBLAS rate of the recompute GEMM [m, h] × [h, 2·h_kv] against m, for fp16 and bf16
//     (tensor cores, fp32 accumulation) and fp32 (CUBLAS_DEFAULT_MATH: no TF32) — the F(m) curve;
//   - the rate of 2 MiB registered copies alone and while fp16 recompute GEMMs run on another
//     stream (does the link slow down beside the recompute?).
// Usage: cuda_probe OUT.json [h] [h_kv]   (default h = h_kv = 4096, OPT-6.7B)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#define CHECK(call)                                                                  \
  do {                                                                               \
    cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "cuda_probe: %s: %s\n", #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
#define CHECK_BLAS(call)                                                               \
  do {                                                                                 \
    cublasStatus_t st_ = (call);                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                \
      std::fprintf(stderr, "cuda_probe: %s: %s\n", #call, cublasGetStatusString(st_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace {

enum class HostKind { pageable, pinned, registered };
const char* name(HostKind k) {
  return k == HostKind::pageable ? "pageable" : (k == HostKind::pinned ? "pinned" : "registered");
}

// Bytes per second of `reps` back-to-back copies of `bytes` in one direction, best of 3.
double copy_rate(void* host, void* device, size_t bytes, bool to_device, cudaStream_t stream) {
  const int reps = static_cast<int>(std::clamp<size_t>((size_t{512} << 20) / bytes, 3, 2000));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    CHECK(cudaEventRecord(a, stream));
    for (int r = 0; r < reps; ++r) {
      if (to_device) {
        CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
      } else {
        CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
      }
    }
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    best = std::max(best, static_cast<double>(bytes) * reps / (ms * 1e-3));
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return best;
}

double gemm_rate(cublasHandle_t blas, cudaDataType_t type, int m, int h, int h_kv,
                 cudaStream_t stream) {
  const size_t elem = type == CUDA_R_32F ? 4 : 2;
  void *x, *w, *y;
  CHECK(cudaMalloc(&x, size_t(m) * h * elem));
  CHECK(cudaMalloc(&w, size_t(2) * h_kv * h * elem));
  CHECK(cudaMalloc(&y, size_t(m) * 2 * h_kv * elem));
  CHECK(cudaMemset(x, 0, size_t(m) * h * elem));
  CHECK(cudaMemset(w, 0, size_t(2) * h_kv * h * elem));
  const float alpha = 1, beta = 0;
  const int n_out = 2 * h_kv;
  auto run = [&] {  // y[m, 2h_kv] = x[m, h] · w[2h_kv, h]ᵀ, row-major, as kvpr computes it
    CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, h, &alpha, w, type, h, x,
                            type, h, &beta, y, type, n_out, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  };
  run();
  const double flops = 4.0 * m * double(h) * h_kv;
  const int reps = std::clamp(static_cast<int>(5e12 / flops), 3, 200);
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    CHECK(cudaEventRecord(a, stream));
    for (int r = 0; r < reps; ++r) run();
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    best = std::max(best, flops * reps / (ms * 1e-3));
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  CHECK(cudaFree(x));
  CHECK(cudaFree(w));
  CHECK(cudaFree(y));
  return best;
}

// H2D bytes per second of `copies` back-to-back copies of `bytes` from registered host memory on
// `copy`, alone and while fp16 GEMMs [m, h] x [h, 2 h_kv] (kvpr's recompute) run on `compute` the
// whole time: does the link slow down beside the recompute? (In a decode step at b = 32 the copies
// ran at 30-34 GB/s beside it, 45-49 alone.)
std::pair<double, double> copy_rate_beside_gemm(void* host, void* device, size_t bytes, int copies,
                                                cublasHandle_t blas, int m, int h, int h_kv,
                                                cudaStream_t copy, cudaStream_t compute) {
  void *x, *w, *y;
  CHECK(cudaMalloc(&x, size_t(m) * h * 2));
  CHECK(cudaMalloc(&w, size_t(2) * h_kv * h * 2));
  CHECK(cudaMalloc(&y, size_t(m) * 2 * h_kv * 2));
  CHECK(cudaMemset(x, 0, size_t(m) * h * 2));
  CHECK(cudaMemset(w, 0, size_t(2) * h_kv * h * 2));
  const float alpha = 1, beta = 0;
  const int n_out = 2 * h_kv;
  CHECK_BLAS(cublasSetStream(blas, compute));
  auto gemm = [&] {
    CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, h, &alpha, w, CUDA_R_16F, h,
                            x, CUDA_R_16F, h, &beta, y, CUDA_R_16F, n_out, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  };
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  auto timed_copies = [&] {
    CHECK(cudaEventRecord(a, copy));
    for (int r = 0; r < copies; ++r) {
      CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, copy));
    }
    CHECK(cudaEventRecord(b, copy));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    return static_cast<double>(bytes) * copies / (ms * 1e-3);
  };
  gemm();
  CHECK(cudaStreamSynchronize(compute));
  double alone = 0, beside = 0;
  for (int trial = 0; trial < 3; ++trial) {
    alone = std::max(alone, timed_copies());
    // GEMMs for about twice the copies' time at 700 TFLOP/s, queued first so they span the copies.
    const double copy_s = static_cast<double>(bytes) * copies / 50e9;
    const double gemm_s = 4.0 * m * double(h) * h_kv / 700e12;
    const int reps = std::clamp(static_cast<int>(2 * copy_s / gemm_s), 4, 20000);
    for (int r = 0; r < reps; ++r) gemm();
    beside = std::max(beside, timed_copies());
    CHECK(cudaStreamSynchronize(compute));
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  CHECK(cudaFree(x));
  CHECK(cudaFree(w));
  CHECK(cudaFree(y));
  return {alone, beside};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: cuda_probe OUT.json [h] [h_kv]\n");
    return 2;
  }
  const int h = argc > 2 ? std::atoi(argv[2]) : 4096;
  const int h_kv = argc > 3 ? std::atoi(argv[3]) : 4096;
  cudaDeviceProp props{};
  CHECK(cudaGetDeviceProperties(&props, 0));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::string json = "{\"device\": \"" + std::string(props.name) +
                     "\", \"sm_count\": " + std::to_string(props.multiProcessorCount) +
                     ", \"copies\": [";

  const size_t max_bytes = size_t{256} << 20;
  void* device = nullptr;
  CHECK(cudaMalloc(&device, max_bytes));
  std::printf("%-10s %-4s %12s %10s\n", "host", "dir", "bytes", "GB/s");
  bool first = true;
  for (HostKind kind : {HostKind::pageable, HostKind::pinned, HostKind::registered}) {
    void* host = nullptr;
    if (kind == HostKind::pinned) {
      CHECK(cudaHostAlloc(&host, max_bytes, cudaHostAllocDefault));
    } else {
      host = std::malloc(max_bytes);
      std::fill_n(static_cast<char*>(host), max_bytes, 1);
      if (kind == HostKind::registered)
        CHECK(cudaHostRegister(host, max_bytes, cudaHostRegisterDefault));
    }
    for (bool to_device : {true, false}) {
      for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
        const double rate = copy_rate(host, device, bytes, to_device, stream);
        std::printf("%-10s %-4s %12zu %10.2f\n", name(kind), to_device ? "h2d" : "d2h", bytes,
                    rate / 1e9);
        json += std::string(first ? "" : ", ") + "{\"host\": \"" + name(kind) +
                "\", \"direction\": \"" + (to_device ? "host_to_device" : "device_to_host") +
                "\", \"bytes\": " + std::to_string(bytes) +
                ", \"bytes_per_s\": " + std::to_string(rate) + "}";
        first = false;
      }
    }
    if (kind == HostKind::pinned) {
      CHECK(cudaFreeHost(host));
    } else {
      if (kind == HostKind::registered) CHECK(cudaHostUnregister(host));
      std::free(host);
    }
  }
  CHECK(cudaFree(device));

  cublasHandle_t blas;
  CHECK_BLAS(cublasCreate(&blas));
  CHECK_BLAS(cublasSetStream(blas, stream));
  CHECK_BLAS(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
  json += "], \"gemm\": {\"h\": " + std::to_string(h) + ", \"h_kv\": " + std::to_string(h_kv) +
          ", \"rates\": [";
  std::printf("%-6s %8s %12s\n", "dtype", "m", "TFLOP/s");
  first = true;
  for (auto [type, tname] : {std::pair{CUDA_R_16F, "f16"}, std::pair{CUDA_R_16BF, "bf16"},
                             std::pair{CUDA_R_32F, "f32"}}) {
    for (int m : {1, 8, 32, 128, 512, 2048, 8192, 32768, 131072}) {
      if (type == CUDA_R_32F && m > 32768)
        continue;  // slow without tensor cores; the curve is flat by then
      const double rate = gemm_rate(blas, type, m, h, h_kv, stream);
      std::printf("%-6s %8d %12.2f\n", tname, m, rate / 1e12);
      json += std::string(first ? "" : ", ") + "{\"dtype\": \"" + tname +
              "\", \"m\": " + std::to_string(m) + ", \"flops_per_s\": " + std::to_string(rate) +
              "}";
      first = false;
    }
  }
  json += "]}";

  // The link beside the recompute: 2 MiB copies (a store block of K at 4096 wide, fp16).
  {
    const size_t bytes = size_t{2} << 20;
    const int copies = 256;
    void* host = std::malloc(bytes);
    std::fill_n(static_cast<char*>(host), bytes, 1);
    CHECK(cudaHostRegister(host, bytes, cudaHostRegisterDefault));
    void* dev = nullptr;
    CHECK(cudaMalloc(&dev, bytes));
    cudaStream_t copy;
    CHECK(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking));
    json += ", \"copy_beside_gemm\": [";
    std::printf("%-8s %14s %14s\n", "gemm m", "alone GB/s", "beside GB/s");
    first = true;
    for (int m : {512, 4096, 32768}) {
      const auto [alone, beside] =
          copy_rate_beside_gemm(host, dev, bytes, copies, blas, m, h, h_kv, copy, stream);
      std::printf("%-8d %14.2f %14.2f\n", m, alone / 1e9, beside / 1e9);
      json += std::string(first ? "" : ", ") + "{\"m\": " + std::to_string(m) +
              ", \"bytes\": " + std::to_string(bytes) +
              ", \"alone_bytes_per_s\": " + std::to_string(alone) +
              ", \"beside_bytes_per_s\": " + std::to_string(beside) + "}";
      first = false;
    }
    json += "]";
    CHECK(cudaStreamDestroy(copy));
    CHECK(cudaFree(dev));
    CHECK(cudaHostUnregister(host));
    std::free(host);
  }
  json += "}\n";
  CHECK_BLAS(cublasDestroy(blas));
  FILE* f = std::fopen(argv[1], "w");
  if (f == nullptr) {
    std::fprintf(stderr, "cuda_probe: cannot write %s\n", argv[1]);
    return 1;
  }
  std::fputs(json.c_str(), f);
  std::fclose(f);
  return 0;
}
