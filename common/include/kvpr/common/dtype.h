// Element types of stored tensors and their conversions. Checkpoints, the host KV store and device
// buffers hold F32, F16 or BF16; the CPU backend computes in fp32 and converts on the way in/out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvpr {

enum class DType : std::uint8_t { f32, f16, bf16 };

std::size_t size_of(DType dtype);
// Names as safetensors spells them: "F32", "F16", "BF16".
std::string_view safetensors_name(DType dtype);
// Names as config.json's torch_dtype spells them: "float32", "float16", "bfloat16".
std::string_view torch_name(DType dtype);
// Parsers return false on an unknown name; callers raise the error with their context.
bool parse_safetensors_dtype(std::string_view name, DType& out);
bool parse_torch_dtype(std::string_view name, DType& out);

float f16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_f16(float value);  // round to nearest even, overflow to inf
float bf16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_bf16(float value);  // round to nearest even

// Converts n elements between any two dtypes (a plain copy when they are equal).
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n);

}  // namespace kvpr
