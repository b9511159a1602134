#include "kvpr/common/dtype.h"

#include <bit>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace kvpr {

std::size_t size_of(DType dtype) {
  return dtype == DType::f32 ? 4 : 2;
}

std::string_view safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
  }
  return "?";
}

std::string_view torch_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "float32";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16";
  }
  return "?";
}

bool parse_safetensors_dtype(std::string_view name, DType& out) {
  if (name == "F32")
    out = DType::f32;
  else if (name == "F16")
    out = DType::f16;
  else if (name == "BF16")
    out = DType::bf16;
  else
    return false;
  return true;
}

bool parse_torch_dtype(std::string_view name, DType& out) {
  if (name == "float32")
    out = DType::f32;
  else if (name == "float16")
    out = DType::f16;
  else if (name == "bfloat16")
    out = DType::bf16;
  else
    return false;
  return true;
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits = 0;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t f32_to_f16(float value) {
  const auto x = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // result is subnormal or zero
    if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t drop = 126 - exp;  // low bits of the 24-bit mantissa below 2^-24
    std::uint32_t half = mant >> drop;
    const std::uint32_t rem = mant & ((1u << drop) - 1u);
    const std::uint32_t mid = 1u << (drop - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  std::uint32_t half = ((abs - 0x38000000u) >> 13);
  const std::uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

float bf16_to_f32(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t f32_to_bf16(float value) {
  auto x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

#if defined(__x86_64__)
// The copy queue converts every fp16 byte that crosses the (emulated) link, so the conversion must
// run at memory speed: F16C converts 8 values per instruction where the scalar path needs a few
// nanoseconds per value. Both round to nearest even, so results are identical.
namespace {

__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(const std::uint16_t* src, float* dst,
                                                         std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(const float* src, std::uint16_t* dst,
                                                         std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(src + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

// CPUID leaf 1, ECX: OSXSAVE (27), AVX (28), F16C (29). (clang 14's __builtin_cpu_supports does
// not know "f16c".)
bool has_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
    const unsigned need = (1u << 27) | (1u << 28) | (1u << 29);
    return (c & need) == need;
  }();
  return yes;
}

}  // namespace
#endif

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n) {
  if (n == 0) return;  // empty spans may carry null pointers, which memcpy must not see
#if defined(__x86_64__)
  if (has_f16c() && src_dtype == DType::f16 && dst_dtype == DType::f32) {
    f16_to_f32_f16c(static_cast<const std::uint16_t*>(src), static_cast<float*>(dst), n);
    return;
  }
  if (has_f16c() && src_dtype == DType::f32 && dst_dtype == DType::f16) {
    f32_to_f16_f16c(static_cast<const float*>(src), static_cast<std::uint16_t*>(dst), n);
    return;
  }
#endif
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * size_of(src_dtype));
    return;
  }
  const auto* s16 = static_cast<const std::uint16_t*>(src);
  const auto* s32 = static_cast<const float*>(src);
  auto* d16 = static_cast<std::uint16_t*>(dst);
  auto* d32 = static_cast<float*>(dst);
  if (dst_dtype == DType::f32) {
    if (src_dtype == DType::f16) {
      for (std::size_t i = 0; i < n; ++i) d32[i] = f16_to_f32(s16[i]);
    } else {
      for (std::size_t i = 0; i < n; ++i) d32[i] = bf16_to_f32(s16[i]);
    }
  } else if (src_dtype == DType::f32) {
    if (dst_dtype == DType::f16) {
      for (std::size_t i = 0; i < n; ++i) d16[i] = f32_to_f16(s32[i]);
    } else {
      for (std::size_t i = 0; i < n; ++i) d16[i] = f32_to_bf16(s32[i]);
    }
  } else {  // f16 <-> bf16 through f32
    for (std::size_t i = 0; i < n; ++i) {
      const float f = src_dtype == DType::f16 ? f16_to_f32(s16[i]) : bf16_to_f32(s16[i]);
      d16[i] = dst_dtype == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f);
    }
  }
}

}  // namespace kvpr
