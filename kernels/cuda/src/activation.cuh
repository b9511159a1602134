// Launcher of the in-place activations (activation.cu): ReLU, exact (erf) GELU, SiLU.
// Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"
#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cuda {

void launch_activation(cudaStream_t stream, Act act, DType dtype, void* x, std::int64_t n);

}  // namespace kvpr::kernels::cuda
