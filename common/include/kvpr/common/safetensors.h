// safetensors files read through mmap: an 8-byte little-endian header length, a JSON header that
// maps tensor names to dtype, shape and [begin, end) data offsets, then the raw data. Every
// malformed file is rejected with one line naming the file, the tensor and the bad value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/common/dtype.h"

namespace kvpr {

// A read-only memory mapping of a whole file; unmapped when the last owner goes.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// A tensor inside a mapped checkpoint file: a view, valid while its file is alive.
struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;  // aligned to size_of(dtype): misaligned files are rejected
  std::size_t nbytes = 0;
  std::shared_ptr<const MappedFile> file;  // keeps the mapping alive

  std::int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the file: header length, JSON, dtypes, shapes against byte counts, offsets
  // in range, aligned to the element size and not overlapping.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::filesystem::path& path() const { return file_->path(); }

 private:
  std::shared_ptr<const MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
};

// Writes a safetensors file (header sorted by name, padded with spaces to a multiple of 8).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;  // numel * size_of(dtype) bytes
};
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<TensorToWrite>& tensors);

// Streams a safetensors file whose tensors do not all fit in memory at once (the model generator).
// The constructor writes the header for `layout` (data pointers ignored) to PATH.tmp; the data is
// then appended in layout() order, in pieces of any size; finish() checks the byte count and
// renames the file into place. Destroyed before finish(), it removes the partial file. One thread
// owns it.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorToWrite> layout);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Data order: larger elements first, then by name, so every tensor stays aligned.
  const std::vector<TensorToWrite>& layout() const { return layout_; }
  std::uint64_t data_bytes() const { return data_bytes_; }
  std::uint64_t written() const { return written_; }
  void append(const void* bytes, std::size_t n);
  void finish();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  std::vector<TensorToWrite> layout_;
  std::FILE* out_ = nullptr;
  std::uint64_t data_bytes_ = 0;
  std::uint64_t written_ = 0;
};

// An untrusted name quoted for a one-line error message: 'name', control characters as \xNN.
std::string quoted_name(std::string_view name);
// A shape for messages: [64,32].
std::string shape_string(const std::vector<std::int64_t>& shape);

}  // namespace kvpr
