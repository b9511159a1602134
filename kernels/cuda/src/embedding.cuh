// Launcher of the embedding gather (embedding.cu): y[i] = table[ids[i]]. Host-callable; no device
// code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// ids[n_ids] is device memory, already checked against the table's rows by the caller.
void launch_embedding(cudaStream_t stream, DType dtype, const void* table, const std::int32_t* ids,
                      void* y, std::int64_t n_ids, std::int64_t cols);

}  // namespace kvpr::kernels::cuda
