// GEMM through cuBLAS. Why this shape: kvpr keeps tensors row-major and weights in Hugging Face's
// [out, in] layout, and asks for y = x·wᵀ. cuBLAS is column-major, where a row-major [r, c] array
// is its transpose [c, r]; so the product is computed as yᵀ = w·xᵀ, i.e. cublasGemmEx(op_A = T on
// w seen as [k, n], op_B = N on x seen as [k, m]) giving yᵀ as [n, m] — which is y row-major. No
// copy, no transpose kernel.
//
// The bias follows the CPU reference's order: y is first filled with the bias rows (a small
// broadcast kernel below), then the product is accumulated onto it with β = 1. Accumulation is
// always CUBLAS_COMPUTE_32F. For fp32 operands the handle's math mode is CUBLAS_DEFAULT_MATH
// (set by the backend), which does not allow TF32, so fp32 results are true fp32 products (what
// the golden tests' 1e-4 needs); fp16/bf16 operands use tensor cores with fp32 accumulation.
#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "gemm.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <typename T>
__global__ void fill_rows_kernel(T* __restrict__ y, const T* __restrict__ bias, std::int64_t m,
                                 std::int64_t n) {
  const std::int64_t total = m * n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    y[idx] = bias[idx % n];
  }
}

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::f16:
      return CUDA_R_16F;
    case DType::bf16:
      return CUDA_R_16BF;
  }
  fail("gemm: unknown dtype ", static_cast<int>(dtype));
}

}  // namespace

void launch_gemm(cublasHandle_t blas, cudaStream_t stream, DType dtype, const void* x,
                 const void* w, const void* bias, void* y, std::int64_t m, std::int64_t n,
                 std::int64_t k) {
  if (m <= 0 || n <= 0) return;
  if (bias != nullptr) {
    constexpr unsigned int kThreads = 256;
    dispatch(dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      fill_rows_kernel<T><<<blocks_for(m * n, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(y), static_cast<const T*>(bias), m, n);
    });
    check_launch("gemm bias");
  }
  if (k <= 0) {
    // An empty sum: y is the bias, or zero.
    if (bias == nullptr) {
      check(cudaMemsetAsync(y, 0, static_cast<std::size_t>(m * n) * size_of(dtype), stream),
            "cudaMemsetAsync");
    }
    return;
  }
  const float alpha = 1.0f;
  const float beta = bias != nullptr ? 1.0f : 0.0f;
  const cudaDataType_t type = cuda_type(dtype);
  const int m_ = static_cast<int>(n);  // rows of yᵀ
  const int n_ = static_cast<int>(m);  // columns of yᵀ
  const int k_ = static_cast<int>(k);
  check_blas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha, w, type, k_, x, type,
                          k_, &beta, y, type, m_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

}  // namespace kvpr::kernels::cuda
