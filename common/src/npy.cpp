#include "kvpr/common/npy.h"

#include <cstring>
#include <fstream>
#include <string>

#include "kvpr/common/error.h"

namespace kvpr {
namespace {

// Finds `'key': value` in the header dict and returns the raw text of the value.
std::string header_value(const std::string& header, const std::string& key,
                         const std::filesystem::path& path) {
  const auto at = header.find("'" + key + "'");
  if (at == std::string::npos) fail(path.string(), ": npy header has no '", key, "'");
  auto colon = header.find(':', at);
  if (colon == std::string::npos) fail(path.string(), ": npy header is malformed");
  ++colon;
  while (colon < header.size() && header[colon] == ' ') ++colon;
  if (colon >= header.size()) fail(path.string(), ": npy header is malformed");
  if (header[colon] == '(') {
    const auto end = header.find(')', colon);
    if (end == std::string::npos) fail(path.string(), ": npy shape is malformed");
    return header.substr(colon, end - colon + 1);
  }
  const auto end = header.find_first_of(",}", colon);
  return header.substr(colon, end - colon);
}

}  // namespace

std::int64_t NpyArray::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

NpyArray read_npy(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  char magic[10];
  if (!in.read(magic, 10) || std::memcmp(magic, "\x93NUMPY", 6) != 0 || magic[6] != 1) {
    fail(path.string(), ": not a version 1.0 .npy file");
  }
  const std::size_t header_len =
      static_cast<unsigned char>(magic[8]) |
      (static_cast<std::size_t>(static_cast<unsigned char>(magic[9])) << 8);
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) {
    fail(path.string(), ": truncated npy header");
  }
  NpyArray array;
  const std::string descr = header_value(header, "descr", path);
  if (header_value(header, "fortran_order", path).find("False") == std::string::npos) {
    fail(path.string(), ": fortran_order arrays are not supported");
  }
  const std::string shape = header_value(header, "shape", path);
  std::size_t pos = 1;
  while (pos < shape.size()) {
    while (pos < shape.size() && (shape[pos] == ' ' || shape[pos] == ',')) ++pos;
    if (pos >= shape.size() || shape[pos] == ')') break;
    std::size_t used = 0;
    array.shape.push_back(std::stoll(shape.substr(pos), &used));
    pos += used;
  }
  const auto n = static_cast<std::size_t>(array.numel());
  auto read_exact = [&](void* dst, std::size_t bytes) {
    if (!in.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes))) {
      fail(path.string(), ": data shorter than shape ", shape);
    }
  };
  if (descr == "'<f4'") {
    array.f32.resize(n);
    read_exact(array.f32.data(), n * 4);
  } else if (descr == "'<i8'") {
    array.i64.resize(n);
    read_exact(array.i64.data(), n * 8);
  } else if (descr == "'<i4'") {
    std::vector<std::int32_t> tmp(n);
    read_exact(tmp.data(), n * 4);
    array.i64.assign(tmp.begin(), tmp.end());
  } else {
    fail(path.string(), ": unsupported npy dtype ", descr);
  }
  return array;
}

void write_npy_f32(const std::filesystem::path& path, const std::vector<std::int64_t>& shape,
                   const float* data) {
  std::string dims;
  std::int64_t n = 1;
  for (auto d : shape) {
    dims += std::to_string(d) + ", ";
    n *= d;
  }
  if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(3, 4)" but "(3,)"
  if (!shape.empty() && shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path.string(), ": cannot open for writing");
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * 4));
  if (!out) fail(path.string(), ": write failed");
}

}  // namespace kvpr
