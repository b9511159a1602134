// The parts shared by kvpr's two tokenizers: the BPE model (vocabulary, ranked merges, unknown
// and byte-fallback handling, the added-token splitter) and the factories each tokenizer file
// exposes to the loader. Private to kvpr_common.
//
// Ownership: a BpeModel is built and checked once by the loader (tokenizer_load.cpp), moved into
// exactly one Tokenizer and immutable afterwards, except for its word cache, which is guarded by
// a mutex so that one Tokenizer may be used from several threads at once. Its encoding loop
// lives in tokenizer_byte_bpe.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvpr/common/tokenizer.h"

namespace kvpr::tokenizer_detail {

// A token or line for a one-line error message: quoted, control characters escaped, long ones cut.
inline std::string quoted(std::string_view text) {
  constexpr std::size_t kMaxShown = 80;
  std::string out = "\"";
  for (const char c : text.substr(0, kMaxShown)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || c == '"' || c == '\\') {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out += {'\\', 'x', kHex[byte >> 4], kHex[byte & 15]};
    } else {
      out += c;
    }
  }
  if (text.size() > kMaxShown) out += "...";
  return out + "\"";
}

// A token of tokenizer.json's "added_tokens": matched literally in the input before any
// normalization or pre-tokenization, as HF tokenizers does.
struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;  // the match swallows whitespace on its left
  bool rstrip = false;  // ... and on its right
};

// A stretch of input: either text for the model, or one added token (added_id >= 0).
struct TextPiece {
  std::string_view text;
  std::size_t offset = 0;  // of `text` in the whole input; Metaspace's "first" scheme needs it
  std::int32_t added_id = -1;
};

struct BpeSpec {
  std::string source;  // file name used in error messages
  std::vector<std::pair<std::string, std::int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<AddedToken> added;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;  // characters not in vocab become <0xNN> pieces
  bool ignore_merges = false;  // a word that is itself in vocab is taken whole
};

struct SpecialIds {
  std::optional<std::int32_t> bos;
  std::optional<std::int32_t> eos;
};

class BpeModel {
 public:
  explicit BpeModel(BpeSpec spec);  // Error naming spec.source on an inconsistent vocab/merges

  // Splits around added tokens, leftmost-longest first.
  std::vector<TextPiece> split_added(std::string_view text) const;
  // Appends the ids of one pre-tokenized word: its UTF-8 characters looked up in the vocab
  // (unknown ones via byte fallback or <unk>, else dropped, as HF does), then merged by rank.
  void encode_word(std::string_view word, std::vector<std::int32_t>& out) const;

  std::optional<std::int32_t> id_of(std::string_view token) const;
  // The token string of an id (added tokens included); Error naming the id when there is none.
  const std::string& token_of(std::int32_t id) const;
  std::int64_t vocab_size() const { return static_cast<std::int64_t>(id_to_token_.size()); }
  const std::string& source() const { return source_; }

 private:
  struct MergeTarget {
    std::int32_t rank;
    std::int32_t new_id;
  };
  struct WordCache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>> words;
  };
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }
  void merge_symbols(std::vector<std::int32_t>& symbols) const;
  void initial_symbols(std::string_view word, std::vector<std::int32_t>& symbols) const;

  std::string source_;
  std::unordered_map<std::string, std::int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;  // ids without a token hold an empty string
  std::vector<bool> has_token_;
  std::unordered_map<std::uint64_t, MergeTarget> merges_;
  std::vector<AddedToken> added_;
  std::array<bool, 256> added_first_byte_{};  // lets split_added skip most positions at once
  std::optional<std::int32_t> unk_id_;
  std::array<std::int32_t, 256> byte_ids_{};  // <0xNN> ids, -1 where the vocab lacks one
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::unique_ptr<WordCache> cache_ = std::make_unique<WordCache>();
};

// tokenizer_byte_bpe.cpp: GPT-2's byte <-> printable-character table and pre-tokenizer.
const std::string& byte_level_symbol(unsigned char byte);
// gpt2_pretokenizer.cpp: GPT-2's pre-tokenization regex (PCRE2), and HF's single_word test: is
// the character at pos (or the one that ends at end) a letter, a number or '_'?
std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text);
bool is_word_char(std::string_view text, std::size_t pos);
bool word_char_before(std::string_view text, std::size_t end);
// `root` is the whole tokenizer.json (for its ByteLevel pre-tokenizer options), or null for
// vocab.json + merges.txt.
std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(BpeModel model, SpecialIds ids,
                                                   const nlohmann::json* root);

// tokenizer_sentencepiece.cpp: normalizer, Metaspace pre-tokenizer and decoder chain read from
// tokenizer.json; Error (unimplemented) naming the file and type for steps it does not know.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(BpeModel model, SpecialIds ids,
                                                        const nlohmann::json& root);

}  // namespace kvpr::tokenizer_detail
