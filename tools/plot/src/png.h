// PNG encoding without zlib: 8-bit RGB, one IDAT holding a zlib stream of stored deflate blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvpr::plot::detail {

// CRC-32 (ISO-HDLC, as PNG uses) of data, continuing from crc (0 to start).
std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0);

// Adler-32 (as zlib uses) of data.
std::uint32_t adler32(const std::uint8_t* data, std::size_t size);

// The whole PNG file for a width x height image of rgb (width*height*3 bytes, row-major).
std::vector<std::uint8_t> encode_png(int width, int height, const std::vector<std::uint8_t>& rgb);

}  // namespace kvpr::plot::detail
