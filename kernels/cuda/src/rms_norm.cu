// RMSNorm, one block per row. Why it is shaped like this: LlamaRMSNorm computes the variance
// mean(x²) in fp32 and scales by rsqrt(variance + eps); the CPU reference sums the squares in
// double and rounds the mean to fp32 before adding eps. This kernel follows it step for step —
// double partial sums, a double block reduction, fp32 from the variance on, 1/sqrtf (correctly
// rounded without fast math) rather than the approximate rsqrtf — so fp32 results match the CPU
// to an ulp. x may alias y: each element is read and then written by the same thread, after the
// reduction.
#include "block_reduce.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "rms_norm.cuh"

namespace kvpr::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const T* x, const T* __restrict__ w, float eps, T* y, std::int64_t cols) {
  __shared__ double scratch[32];
  const T* px = x + static_cast<std::int64_t>(blockIdx.x) * cols;
  T* py = y + static_cast<std::int64_t>(blockIdx.x) * cols;
  double sq = 0;
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const double v = to_f32(px[i]);
    sq += v * v;
  }
  const auto variance = static_cast<float>(block_sum(sq, scratch) / static_cast<double>(cols));
  const float rstd = 1.0f / sqrtf(variance + eps);
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    py[i] = from_f32<T>(to_f32(w[i]) * (to_f32(px[i]) * rstd));
  }
}

}  // namespace

void launch_rms_norm(cudaStream_t stream, DType dtype, const void* x, const void* w, float eps,
                     void* y, std::int64_t rows, std::int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rms_norm_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), eps, static_cast<T*>(y), cols);
  });
  check_launch("rms_norm");
}

}  // namespace kvpr::kernels::cuda
