// Row argmax for greedy sampling over the vocabulary. Why the tie rule is spelled out: greedy
// decoding must pick the same token on both backends, and the CPU reference keeps the first of
// equal maxima. Each thread scans a strided slice with a strict `>` (so it keeps its first
// maximum), then the block reduces (value, index) pairs preferring the larger value and, on
// equal values, the smaller index — which is the first maximum of the row. (Rows with NaNs may
// differ from the CPU's scan; logits with NaNs are an error upstream anyway.)
//
// Shape: one block of 256 threads per row; a vocabulary row (32k–50k) is ~200 loads per thread.
#include "argmax.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"

namespace kvpr::kernels::cuda {
namespace {

constexpr unsigned int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const T* __restrict__ x, std::int64_t cols, std::int32_t* __restrict__ out) {
  __shared__ float values[kThreads];
  __shared__ std::int64_t indices[kThreads];
  const T* row = x + static_cast<std::int64_t>(blockIdx.x) * cols;
  float best = 0.0f;
  std::int64_t best_i = -1;  // -1: this thread saw no element
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = to_f32(row[i]);
    if (best_i < 0 || v > best) {
      best = v;
      best_i = i;
    }
  }
  values[threadIdx.x] = best;
  indices[threadIdx.x] = best_i;
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float v = values[threadIdx.x + half];
      const std::int64_t i = indices[threadIdx.x + half];
      const std::int64_t mine = indices[threadIdx.x];
      const bool take =
          i >= 0 && (mine < 0 || v > values[threadIdx.x] || (v == values[threadIdx.x] && i < mine));
      if (take) {
        values[threadIdx.x] = v;
        indices[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<std::int32_t>(indices[0]);
}

}  // namespace

void launch_argmax(cudaStream_t stream, DType dtype, const void* x, std::int64_t rows,
                   std::int64_t cols, std::int32_t* out) {
  if (rows <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    argmax_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), cols, out);
  });
  check_launch("argmax");
}

}  // namespace kvpr::kernels::cuda
