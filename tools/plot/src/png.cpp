// PNG layout: signature, IHDR, IDAT, IEND; each chunk is length (big-endian), type, data and the
// CRC-32 of type+data. The IDAT data is a zlib stream (RFC 1950) whose deflate body (RFC 1951) is
// a run of stored blocks of at most 65535 bytes, over the image rows each prefixed by filter type
// 0 (none); the stream ends with the big-endian Adler-32 of the uncompressed bytes.
#include "png.h"

#include <algorithm>
#include <array>
#include <string_view>

#include "kvpr/common/error.h"

namespace kvpr::plot::detail {

namespace {

constexpr std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t n = 0; n < 256; ++n) {
    std::uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  return table;
}

constexpr std::array<std::uint32_t, 256> kCrcTable = make_crc_table();

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

void put_chunk(std::vector<std::uint8_t>& out, std::string_view type,
               const std::vector<std::uint8_t>& data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type.begin(), type.end());
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, crc32(out.data() + start, out.size() - start));
}

}  // namespace

std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc) {
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = kCrcTable[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

std::uint32_t adler32(const std::uint8_t* data, std::size_t size) {
  constexpr std::uint32_t kMod = 65521;
  std::uint32_t a = 1, b = 0;
  while (size > 0) {
    // 5552 bytes is the most that can be summed before b overflows 32 bits.
    const std::size_t n = std::min<std::size_t>(size, 5552);
    for (std::size_t i = 0; i < n; ++i) {
      a += data[i];
      b += a;
    }
    a %= kMod;
    b %= kMod;
    data += n;
    size -= n;
  }
  return (b << 16) | a;
}

std::vector<std::uint8_t> encode_png(int width, int height, const std::vector<std::uint8_t>& rgb) {
  const std::size_t row_bytes = static_cast<std::size_t>(width) * 3;
  if (width <= 0 || height <= 0 || rgb.size() != row_bytes * static_cast<std::size_t>(height)) {
    fail("png: ", rgb.size(), " bytes do not make a ", width, "x", height, " RGB image");
  }

  // The filtered scanlines: a 0 (no filter) before each row.
  std::vector<std::uint8_t> raw;
  raw.reserve((row_bytes + 1) * static_cast<std::size_t>(height));
  for (int row = 0; row < height; ++row) {
    raw.push_back(0);
    const auto* begin = rgb.data() + row_bytes * static_cast<std::size_t>(row);
    raw.insert(raw.end(), begin, begin + row_bytes);
  }

  std::vector<std::uint8_t> zlib;
  constexpr std::size_t kMaxStored = 65535;
  zlib.reserve(raw.size() + raw.size() / kMaxStored * 5 + 16);
  zlib.push_back(0x78);  // CM 8 (deflate), CINFO 7 (32 KiB window)
  zlib.push_back(0x01);  // FLEVEL 0, no dictionary, FCHECK so that 0x7801 % 31 == 0
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min(kMaxStored, raw.size() - pos);
    const bool last = pos + n == raw.size();
    zlib.push_back(last ? 1 : 0);  // BFINAL, BTYPE 00 (stored); the rest of the byte is padding
    const auto len = static_cast<std::uint16_t>(n);
    const auto nlen = static_cast<std::uint16_t>(~len);
    zlib.push_back(static_cast<std::uint8_t>(len & 0xff));
    zlib.push_back(static_cast<std::uint8_t>(len >> 8));
    zlib.push_back(static_cast<std::uint8_t>(nlen & 0xff));
    zlib.push_back(static_cast<std::uint8_t>(nlen >> 8));
    zlib.insert(zlib.end(), raw.begin() + static_cast<std::ptrdiff_t>(pos),
                raw.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
  } while (pos < raw.size());
  put_u32(zlib, adler32(raw.data(), raw.size()));

  std::vector<std::uint8_t> ihdr;
  put_u32(ihdr, static_cast<std::uint32_t>(width));
  put_u32(ihdr, static_cast<std::uint32_t>(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // bit depth 8, colour type 2 (RGB), deflate,
                                             // adaptive filtering, no interlace

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  png.reserve(zlib.size() + 64);
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", zlib);
  put_chunk(png, "IEND", {});
  return png;
}

}  // namespace kvpr::plot::detail
