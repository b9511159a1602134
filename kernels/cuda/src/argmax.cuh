// Launcher of the row argmax (argmax.cu): out[r] = index of the largest value of row r, the first
// one on ties. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// out[rows] is device memory; cols ≥ 1 and fits an int32 index (checked by the caller).
void launch_argmax(cudaStream_t stream, DType dtype, const void* x, std::int64_t rows,
                   std::int64_t cols, std::int32_t* out);

}  // namespace kvpr::kernels::cuda
