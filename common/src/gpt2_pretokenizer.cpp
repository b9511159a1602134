// GPT-2's pre-tokenization regex, run by PCRE2 with Unicode properties:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// compiled once per process (UTF + UCP, JIT-compiled where PCRE2 has a JIT) and shared by every
// thread; each thread keeps its own match data. PCRE2 10.42's tables are Unicode 14.0, the
// version the GPT-2 tests were checked against.
//
// \s under PCRE2_UCP is White_Space plus U+180E (MONGOLIAN VOWEL SEPARATOR, which Unicode 6.3
// moved out of White_Space), so the pattern moves U+180E from \s to the "other" class to mean
// exactly what the Python `regex` module that GPT-2 uses means by \s.
//
// Invalid UTF-8 is normal input for a byte-level tokenizer: PCRE2_MATCH_INVALID_UTF lets the
// regex run over it, no class matches an invalid sequence, and each run of bytes the regex
// leaves out becomes a word of its own (its bytes still reach byte-level BPE, none is lost).
#define PCRE2_CODE_UNIT_WIDTH 8  // UTF-8 text: the pcre2_*_8 functions
#include <pcre2.h>

#include <memory>
#include <string>

#include "kvpr/common/error.h"
#include "tokenizer_bpe.h"
#include "tokenizer_utf8.h"

namespace kvpr::tokenizer_detail {
namespace {

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using Code = std::unique_ptr<pcre2_code, CodeDeleter>;
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// Compiles pattern, JIT-compiles it when PCRE2 can (the interpreter runs it otherwise); a pattern
// that does not compile is a bug here, reported with PCRE2's message and offset.
Code compile(const char* pattern, std::uint32_t options) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  Code code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | options, &error,
                          &offset, nullptr));
  if (!code) {
    fail("tokenizer: PCRE2 cannot compile ", pattern, " at offset ", offset, ": ",
         pcre2_message(error));
  }
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);  // no JIT: pcre2_match interprets
  return code;
}

// The pattern above with \s, \S and [^\s...] corrected for U+180E (see the top of the file).
const pcre2_code* gpt2_regex() {
  static const Code code = compile(
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?(?:[^\\s\\p{L}\\p{N}]|\\x{180E})+"
      "|[^\\S\\x{180E}]+(?![\\S\\x{180E}])|[^\\S\\x{180E}]+",
      0);
  return code.get();
}

// HF's single_word test: a letter, a number or '_'.
const pcre2_code* word_char_regex() {
  static const Code code = compile("[\\p{L}\\p{N}_]", PCRE2_ANCHORED);
  return code.get();
}

// This thread's match data, big enough for either pattern (no capture groups: one pair).
pcre2_match_data* thread_match_data() {
  thread_local const MatchData data(pcre2_match_data_create(1, nullptr));
  if (!data) fail("tokenizer: out of memory for PCRE2 match data");
  return data.get();
}

// Runs code on text from pos; the match's [begin, end) or false when none. An error other than
// "no match" (a resource limit, say) throws with PCRE2's message.
bool find(const pcre2_code* code, std::string_view text, std::size_t pos, std::size_t& begin,
          std::size_t& end) {
  pcre2_match_data* data = thread_match_data();
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0,
                             data, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("tokenizer: PCRE2 match failed: ", pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  begin = ovector[0], end = ovector[1];
  return true;
}

}  // namespace

std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text) {
  const pcre2_code* code = gpt2_regex();
  std::vector<std::string_view> words;
  std::size_t begin = 0, end = 0;
  for (std::size_t pos = 0; pos < text.size(); pos = end) {
    if (!find(code, text, pos, begin, end)) begin = end = text.size();
    if (begin > pos) words.push_back(text.substr(pos, begin - pos));  // bytes no class matched
    if (end > begin) words.push_back(text.substr(begin, end - begin));
  }
  return words;
}

bool is_word_char(std::string_view text, std::size_t pos) {
  std::size_t begin = 0, end = 0;
  return find(word_char_regex(), text, pos, begin, end);
}

bool word_char_before(std::string_view text, std::size_t end) {
  std::size_t begin = end - 1;
  while (begin > 0 && end - begin < 4 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) {
    --begin;
  }
  return next_utf8(text, begin).size == end - begin && is_word_char(text, begin);
}

}  // namespace kvpr::tokenizer_detail
