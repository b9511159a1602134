// GEMM of the CUDA backend (gemm.cu): y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n]) with cuBLAS, all
// operands row-major in one dtype, accumulation in fp32. Host-callable; no device code here.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

// `blas` is bound to `stream` already. bias may be null. y does not overlap x, w or bias
// (checked by the caller); m, n, k fit an int (checked by the caller).
void launch_gemm(cublasHandle_t blas, cudaStream_t stream, DType dtype, const void* x,
                 const void* w, const void* bias, void* y, std::int64_t m, std::int64_t n,
                 std::int64_t k);

}  // namespace kvpr::kernels::cuda
