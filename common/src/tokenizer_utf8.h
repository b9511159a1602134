// UTF-8 helpers private to the tokenizers: strict decoding that never throws (invalid input is
// normal for a tokenizer: byte-level BPE and byte-fallback pieces decode to arbitrary bytes) and
// U+FFFD replacement as Python's errors="replace" does it. Character classes (\p{L}, \p{N}, \s)
// come from PCRE2's Unicode tables, in gpt2_pretokenizer.cpp.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvpr::tokenizer_detail {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// One step of decoding: a code point and the bytes it used. An invalid sequence yields
// valid == false and size == the length of its maximal valid prefix (at least 1), which is the
// unit that Python's errors="replace" and Rust's from_utf8_lossy turn into one U+FFFD.
struct Utf8Step {
  char32_t cp;
  std::size_t size;
  bool valid;
};

inline Utf8Step next_utf8(std::string_view s, std::size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return {b0, 1, true};
  std::size_t need = 0;
  char32_t cp = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return {kReplacementChar, 1, false};
  }
  for (std::size_t i = 1; i <= need; ++i) {
    if (pos + i >= s.size()) return {kReplacementChar, i, false};
    const auto b = static_cast<unsigned char>(s[pos + i]);
    if (b < lo || b > hi) return {kReplacementChar, i, false};
    cp = (cp << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  return {cp, need + 1, true};
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const Utf8Step step = next_utf8(s, pos);
    if (!step.valid) return false;
    pos += step.size;
  }
  return true;
}

// Replaces each maximal invalid subsequence by U+FFFD, as Python's bytes.decode(errors="replace").
inline std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t pos = 0; pos < s.size();) {
    const Utf8Step step = next_utf8(s, pos);
    if (step.valid) {
      out.append(s.substr(pos, step.size));
    } else {
      append_utf8(out, kReplacementChar);
    }
    pos += step.size;
  }
  return out;
}

}  // namespace kvpr::tokenizer_detail
