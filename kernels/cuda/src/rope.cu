// Rotate-half RoPE as Hugging Face computes it in fp32: for head element i < d/2 of a row at
// position p, angle = p · inv_freq[i], (a, b) = (x[i], x[i + d/2]) becomes
// (a·cos − b·sin, b·cos + a·sin). Why the frequencies come from the host: a 1-ulp difference in
// powf becomes a visible phase error at positions in the tens of thousands (angle = p · inv_freq),
// so the table is computed once per call by the same std::pow as the CPU reference and uploaded
// with the positions; only cosf/sinf (accurate versions, full range reduction) run here.
//
// Shape: one thread per (row, head, i) pair, grid-stride; each thread owns the two elements it
// rotates, so the op is in place without synchronisation.
#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "rope.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <typename T>
__global__ void rope_kernel(T* x, const std::int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, std::int64_t rows,
                            std::int64_t n_heads, std::int64_t head_dim) {
  const std::int64_t half = head_dim / 2;
  const std::int64_t total = rows * n_heads * half;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const std::int64_t i = idx % half;
    const std::int64_t row_head = idx / half;
    const std::int64_t h = row_head % n_heads;
    const std::int64_t r = row_head / n_heads;
    const float angle = static_cast<float>(positions[r]) * inv_freq[i];
    const float c = cosf(angle);
    const float s = sinf(angle);
    T* lo = x + (r * n_heads + h) * head_dim;
    const float a = to_f32(lo[i]);
    const float b = to_f32(lo[i + half]);
    lo[i] = from_f32<T>(a * c - b * s);
    lo[i + half] = from_f32<T>(b * c + a * s);
  }
}

}  // namespace

void launch_rope(cudaStream_t stream, DType dtype, void* x, const std::int32_t* positions,
                 const float* inv_freq, std::int64_t rows, std::int64_t n_heads,
                 std::int64_t head_dim) {
  const std::int64_t total = rows * n_heads * (head_dim / 2);
  if (total <= 0) return;
  constexpr unsigned int kThreads = 256;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(x), positions, inv_freq, rows, n_heads, head_dim);
  });
  check_launch("rope");
}

}  // namespace kvpr::kernels::cuda
