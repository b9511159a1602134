// Block-wide reductions shared by the row kernels (norms, argmax helpers). Device code; included
// by .cu files only. Every thread of the block must call them (they contain __syncthreads), and
// every thread receives the result.
#pragma once

namespace kvpr::kernels::cuda {

constexpr unsigned int kFullMask = 0xffffffffu;

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over all threads of the block; blockDim.x must be a multiple of 32 and at most 1024.
// `scratch` is 32 values of shared memory, reusable after the call returns.
template <typename V>
__device__ V block_sum(V v, V* scratch) {
  const unsigned int lane = threadIdx.x % 32;
  const unsigned int warp = threadIdx.x / 32;
  const unsigned int n_warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = lane < n_warps ? scratch[lane] : V(0);
  total = warp_sum(total);
  return total;
}

}  // namespace kvpr::kernels::cuda
