// LayerNorm, one block per row. Why it is shaped like this: the CPU reference takes the mean and
// the variance in double (two passes: mean first, then Σ(x − mean)²) and applies the result in
// fp32 as ((x − mean_f)·rstd_f)·w + b. Doing the same here — double partial sums per thread, a
// double block reduction, then the fp32 formula — keeps the two backends within an ulp or two in
// fp32 (FMA contraction is the remaining difference), which the golden tests' 1e-4 needs; the
// double arithmetic is a few hundred operations per row, nothing next to the GEMMs.
//
// A row is read three times (mean, variance, output) by the same block; x may alias y because
// every element is read by the thread that later writes it, after both reductions.
#include "block_reduce.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "layer_norm.cuh"

namespace kvpr::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    layer_norm_kernel(const T* x, const T* __restrict__ w, const T* __restrict__ b, float eps, T* y,
                      std::int64_t cols) {
  __shared__ double scratch[32];
  const T* px = x + static_cast<std::int64_t>(blockIdx.x) * cols;
  T* py = y + static_cast<std::int64_t>(blockIdx.x) * cols;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) sum += to_f32(px[i]);
  const double mean = block_sum(sum, scratch) / static_cast<double>(cols);
  double sq = 0;
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const double d = static_cast<double>(to_f32(px[i])) - mean;
    sq += d * d;
  }
  const double var = block_sum(sq, scratch) / static_cast<double>(cols);
  const auto mean_f = static_cast<float>(mean);
  const auto rstd_f = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    py[i] = from_f32<T>((to_f32(px[i]) - mean_f) * rstd_f * to_f32(w[i]) + to_f32(b[i]));
  }
}

}  // namespace

void launch_layer_norm(cudaStream_t stream, DType dtype, const void* x, const void* w,
                       const void* b, float eps, void* y, std::int64_t rows, std::int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), eps,
        static_cast<T*>(y), cols);
  });
  check_launch("layer_norm");
}

}  // namespace kvpr::kernels::cuda
