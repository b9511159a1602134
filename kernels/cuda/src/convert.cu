// Dtype conversion on the device. Why a kernel at all: the host store keeps K,V and activations
// in the model's dtype (fp16 for real checkpoints) while the compute buffers may be fp32, and the
// link must carry the small form. So a host→device copy moves the raw stored bytes over PCIe into
// a stream-ordered staging buffer, and this kernel widens them on the device in the same stream
// (and a device→host copy narrows on the device before the bytes cross the link).
//
// Shape: a grid-stride loop, one element per thread per iteration, through fp32 — every pair of
// kvpr's dtypes converts exactly through fp32 except the final rounding, which is round-to-nearest-
// even as in kvpr::convert on the host, so both backends store the same bits. The pairs are
// template parameters; only the six pairs with from != to are instantiated.
#include <type_traits>

#include "convert.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <typename S, typename D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = from_f32<D>(to_f32(src[i]));
  }
}

}  // namespace

void launch_convert(cudaStream_t stream, DType from, const void* src, DType to, void* dst,
                    std::int64_t n) {
  if (n <= 0) return;
  if (from == to)
    fail("cuda backend: launch_convert called for one dtype (", safetensors_name(from), ")");
  constexpr unsigned int kThreads = 256;
  dispatch(from, [&](auto from_tag) {
    using S = typename decltype(from_tag)::type;
    dispatch(to, [&](auto to_tag) {
      using D = typename decltype(to_tag)::type;
      if constexpr (!std::is_same_v<S, D>) {
        convert_kernel<S, D><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
            static_cast<const S*>(src), static_cast<D*>(dst), n);
      }
    });
  });
  check_launch("convert");
}

}  // namespace kvpr::kernels::cuda
