// Launcher of rotate-half RoPE (rope.cu), in place on x[rows, n_heads·head_dim]. Host-callable;
// no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// positions[rows] and inv_freq[head_dim / 2] are device memory. inv_freq is computed on the host
// exactly as the CPU reference does (1 / theta^(2i/d) in fp32 with std::pow), so both backends
// rotate by bit-identical angles.
void launch_rope(cudaStream_t stream, DType dtype, void* x, const std::int32_t* positions,
                 const float* inv_freq, std::int64_t rows, std::int64_t n_heads,
                 std::int64_t head_dim);

}  // namespace kvpr::kernels::cuda
