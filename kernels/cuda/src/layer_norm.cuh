// Launcher of LayerNorm (layer_norm.cu) over rows of `cols` elements: y = (x − mean)·rstd·w + b,
// biased variance as torch.nn.LayerNorm. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// y may alias x exactly. w and b hold `cols` elements.
void launch_layer_norm(cudaStream_t stream, DType dtype, const void* x, const void* w,
                       const void* b, float eps, void* y, std::int64_t rows, std::int64_t cols);

}  // namespace kvpr::kernels::cuda
