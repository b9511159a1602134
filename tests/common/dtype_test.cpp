// dtype conversions: known values, round-to-nearest-even at every midpoint, subnormals, inf/nan,
// and exhaustive round trips over all 16-bit patterns.
#include "kvpr/common/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace kvpr {
namespace {

float bits_f32(std::uint32_t bits) {
  return std::bit_cast<float>(bits);
}

bool f16_is_nan(std::uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}
bool bf16_is_nan(std::uint16_t b) {
  return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0;
}

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(size_of(DType::f32), 4u);
  EXPECT_EQ(size_of(DType::f16), 2u);
  EXPECT_EQ(size_of(DType::bf16), 2u);
  for (const DType d : {DType::f32, DType::f16, DType::bf16}) {
    DType parsed = DType::f32;
    ASSERT_TRUE(parse_safetensors_dtype(safetensors_name(d), parsed));
    EXPECT_EQ(parsed, d);
    ASSERT_TRUE(parse_torch_dtype(torch_name(d), parsed));
    EXPECT_EQ(parsed, d);
  }
  DType out = DType::f32;
  EXPECT_FALSE(parse_safetensors_dtype("I8", out));
  EXPECT_FALSE(parse_torch_dtype("int8", out));
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);   // largest finite
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);  // below the midpoint to inf
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);   // midpoint rounds to even: inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);      // overflow
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // half of it: tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 ulp: tie to even (2)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0x0000);         // underflow
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, even below
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie, even above
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);               // 2^-2 · (1 + 341/1024)
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_TRUE(std::signbit(f16_to_f32(0xfc00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(bits_f32(0x7f800001u))));  // signalling nan stays nan
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
}

TEST(DType, F16ExhaustiveRoundTrip) {
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    if (f16_is_nan(h)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(h))) << bits;
      EXPECT_TRUE(f16_is_nan(f32_to_f16(f16_to_f32(h)))) << bits;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f16_to_f32(h)), h) << std::hex << bits;
  }
}

// Between each pair of adjacent finite f16 values: the exact midpoint goes to the even one, one
// float ulp either side goes to the nearer one.
TEST(DType, F16RoundsToNearestEvenAtEveryMidpoint) {
  for (std::uint32_t sign : {0u, 0x8000u}) {
    for (std::uint32_t low = 0; low < 0x7bffu; ++low) {
      const auto a = static_cast<std::uint16_t>(sign | low);
      const auto b = static_cast<std::uint16_t>(sign | (low + 1));
      const float mid = (f16_to_f32(a) + f16_to_f32(b)) / 2.0f;  // exact in f32
      const std::uint16_t even = (low & 1u) ? b : a;
      ASSERT_EQ(f32_to_f16(mid), even) << std::hex << low;
      const float toward_b = std::nextafter(mid, f16_to_f32(b));
      const float toward_a = std::nextafter(mid, f16_to_f32(a));
      ASSERT_EQ(f32_to_f16(toward_b), b) << std::hex << low;
      ASSERT_EQ(f32_to_f16(toward_a), a) << std::hex << low;
    }
  }
}

TEST(DType, Bf16KnownValuesAndRounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f808000u)), 0x3f80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f818000u)), 0x3f82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f808001u)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7fffffu)), 0x7f80);  // max float rounds to inf
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00000001u)), 0x0000);  // tiny subnormal rounds to zero
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00018000u)), 0x0002);  // subnormal tie to even
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(bits_f32(0x7f800001u))));  // low-bit nan must not become inf
}

TEST(DType, Bf16ExhaustiveRoundTrip) {
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto b = static_cast<std::uint16_t>(bits);
    if (bf16_is_nan(b)) {
      EXPECT_TRUE(bf16_is_nan(f32_to_bf16(bf16_to_f32(b)))) << bits;
      continue;
    }
    ASSERT_EQ(f32_to_bf16(bf16_to_f32(b)), b) << std::hex << bits;
  }
}

TEST(DType, ConvertArraysBetweenAllDtypes) {
  const std::vector<float> src = {0.0f, -1.5f, 3.140625f, 65504.0f, std::ldexp(1.0f, -24), 1e-3f};
  std::vector<std::uint16_t> half(src.size()), brain(src.size()), brain2(src.size());
  std::vector<float> back(src.size());
  convert(src.data(), DType::f32, half.data(), DType::f16, src.size());
  convert(src.data(), DType::f32, brain.data(), DType::bf16, src.size());
  for (std::size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(half[i], f32_to_f16(src[i]));
    EXPECT_EQ(brain[i], f32_to_bf16(src[i]));
  }
  convert(half.data(), DType::f16, back.data(), DType::f32, src.size());
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(back[i], src[i]) << i;  // exact in f16
  convert(half.data(), DType::f16, brain2.data(), DType::bf16, src.size());
  for (std::size_t i = 0; i < src.size(); ++i)
    EXPECT_EQ(brain2[i], f32_to_bf16(f16_to_f32(half[i])));
  std::vector<float> copy(src.size());
  convert(src.data(), DType::f32, copy.data(), DType::f32, src.size());
  EXPECT_EQ(copy, src);
}

}  // namespace
}  // namespace kvpr
