// Launcher of RMSNorm (rms_norm.cu) over rows of `cols` elements: y = w · (x · rsqrt(mean(x²) +
// eps)), as LlamaRMSNorm. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// y may alias x exactly. w holds `cols` elements.
void launch_rms_norm(cudaStream_t stream, DType dtype, const void* x, const void* w, float eps,
                     void* y, std::int64_t rows, std::int64_t cols);

}  // namespace kvpr::kernels::cuda
