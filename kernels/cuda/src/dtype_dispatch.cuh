// Element types on the device. Every kernel of the CUDA backend is a template over the storage
// type T of its tensors (float, __half or __nv_bfloat16) and does its arithmetic in fp32: T is
// only how numbers are stored, never how they are combined. `dispatch` turns the runtime DType
// of a tensor into that template argument in one place, so a launcher instantiates exactly the
// three variants and no kernel is copied to make another.
//
// Device code; included by the .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kvpr/common/dtype.h"
#include "kvpr/common/error.h"

namespace kvpr::kernels::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);  // round to nearest even, overflow to inf: as kvpr::f32_to_f16
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Calls f(TypeTag<T>{}) with T the storage type of `dtype`.
template <typename F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32:
      f(TypeTag<float>{});
      return;
    case DType::f16:
      f(TypeTag<__half>{});
      return;
    case DType::bf16:
      f(TypeTag<__nv_bfloat16>{});
      return;
  }
  fail("cuda backend: unknown dtype ", static_cast<int>(dtype));
}

// Blocks of a 1-D launch over n elements with `threads` per block, capped so that grid-stride
// loops cover the rest.
inline unsigned int blocks_for(std::int64_t n, unsigned int threads) {
  constexpr std::int64_t kMaxBlocks = 65535LL * 16;
  const std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace kvpr::kernels::cuda
