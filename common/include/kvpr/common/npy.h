// NumPy .npy files (format 1.0, C order, little-endian): the golden reference data and the
// `--logits-out` output of `kvpr run`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace kvpr {

struct NpyArray {
  std::vector<std::int64_t> shape;
  std::vector<float> f32;         // filled for '<f4' arrays
  std::vector<std::int64_t> i64;  // filled for '<i8' and '<i4' arrays

  std::int64_t numel() const;
};

// Reads '<f4', '<i8' or '<i4' arrays; anything else is an Error naming the file and descr.
NpyArray read_npy(const std::filesystem::path& path);

void write_npy_f32(const std::filesystem::path& path, const std::vector<std::int64_t>& shape,
                   const float* data);

}  // namespace kvpr
