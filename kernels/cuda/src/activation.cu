// In-place activations of the FFN: ReLU (OPT), GELU in torch's exact erf form, SiLU (LLaMA).
// Why the formulas look the way they do: each is written in the CPU reference's (and PyTorch's)
// order of float operations — x·0.5·(1 + erf(x/√2)), x / (1 + exp(−x)) — with the accurate
// erff/expf (this file is never built with fast math), so fp32 results agree to an ulp or two.
// The activation is a template parameter, as is the storage type.
#include "activation.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <Act A>
__device__ __forceinline__ float apply(float x) {
  if constexpr (A == Act::relu) {
    return x > 0.0f ? x : 0.0f;
  } else if constexpr (A == Act::gelu) {
    constexpr float kInvSqrt2 = 0.70710678118654752440f;
    return x * 0.5f * (1.0f + erff(x * kInvSqrt2));
  } else {
    return x / (1.0f + expf(-x));
  }
}

template <typename T, Act A>
__global__ void activation_kernel(T* x, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = from_f32<T>(apply<A>(to_f32(x[i])));
  }
}

template <Act A>
void launch(cudaStream_t stream, DType dtype, void* x, std::int64_t n) {
  constexpr unsigned int kThreads = 256;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    activation_kernel<T, A>
        <<<blocks_for(n, kThreads), kThreads, 0, stream>>>(static_cast<T*>(x), n);
  });
}

}  // namespace

void launch_activation(cudaStream_t stream, Act act, DType dtype, void* x, std::int64_t n) {
  if (n <= 0) return;
  switch (act) {
    case Act::relu:
      launch<Act::relu>(stream, dtype, x, n);
      break;
    case Act::gelu:
      launch<Act::gelu>(stream, dtype, x, n);
      break;
    case Act::silu:
      launch<Act::silu>(stream, dtype, x, n);
      break;
    default:
      fail("activation: unknown activation ", static_cast<int>(act));
  }
  check_launch("activation");
}

}  // namespace kvpr::kernels::cuda
