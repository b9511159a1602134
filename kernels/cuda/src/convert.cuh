// Launcher of the dtype conversion kernel (convert.cu): n elements from `src` stored as `from`
// to `dst` stored as `to`, on the device, in stream order. Used by copies that change dtype on
// the way (fp16 K,V from the host store into fp32 compute buffers, and back) and by
// copy_device. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// from != to; src and dst are device memory and do not overlap.
void launch_convert(cudaStream_t stream, DType from, const void* src, DType to, void* dst,
                    std::int64_t n);

}  // namespace kvpr::kernels::cuda
