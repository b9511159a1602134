// Launcher of the elementwise binary ops (binary.cu): y = a + b and y = a · b over n elements of
// one dtype. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

enum class BinaryOp { add, mul };

// y may alias a or b exactly (each element is read before it is written, by the same thread).
void launch_binary(cudaStream_t stream, BinaryOp op, DType dtype, const void* a, const void* b,
                   void* y, std::int64_t n);

}  // namespace kvpr::kernels::cuda
