// Elementwise add and mul (the residual adds and the SwiGLU product). Why one file: the two ops
// differ in one line, so the operation is a template parameter next to the storage type instead
// of two copied kernels. Arithmetic is fp32 (a·b or a+b rounded once to T), which for fp32
// storage is bit-identical to the CPU reference.
//
// Shape: a grid-stride loop with one element per thread per iteration; these ops are memory
// bound and tiny next to the GEMMs around them, so nothing cleverer pays.
#include "binary.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <typename T, BinaryOp Op>
__global__ void binary_kernel(const T* a, const T* b, T* y, std::int64_t n) {
  // No __restrict__: y may alias a or b.
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float u = to_f32(a[i]);
    const float v = to_f32(b[i]);
    y[i] = from_f32<T>(Op == BinaryOp::add ? u + v : u * v);
  }
}

template <BinaryOp Op>
void launch(cudaStream_t stream, DType dtype, const void* a, const void* b, void* y,
            std::int64_t n) {
  constexpr unsigned int kThreads = 256;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    binary_kernel<T, Op><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(y), n);
  });
}

}  // namespace

void launch_binary(cudaStream_t stream, BinaryOp op, DType dtype, const void* a, const void* b,
                   void* y, std::int64_t n) {
  if (n <= 0) return;
  if (op == BinaryOp::add) {
    launch<BinaryOp::add>(stream, dtype, a, b, y, n);
  } else {
    launch<BinaryOp::mul>(stream, dtype, a, b, y, n);
  }
  check_launch(op == BinaryOp::add ? "add" : "mul");
}

}  // namespace kvpr::kernels::cuda
