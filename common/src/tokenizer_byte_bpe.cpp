// Byte-level BPE as GPT-2 and OPT use it, and the BPE model's encoding loop that the
// SentencePiece tokenizer shares (the model is built and checked in tokenizer_load.cpp).
//
// Input text is cut into words by GPT-2's pre-tokenization regex (PCRE2, in
// gpt2_pretokenizer.cpp), each word's bytes are mapped to printable
// stand-in characters (GPT-2's bytes_to_unicode), and the BPE model merges those. Decoding maps
// the stand-ins back to bytes and replaces invalid UTF-8 by U+FFFD, like errors="replace".
//
// The merge loop is HF tokenizers' `BPE`: a word starts as its UTF-8 characters, then the
// adjacent pair of lowest merge rank is merged repeatedly, ties to the leftmost. For merge lists
// learned by BPE training, where a merge's parts come from earlier merges, this gives exactly
// the tokens of GPT-2's reference encoder, which merges every occurrence of the best pair per
// round.
//
// Thread safety: a tokenizer is immutable after construction but for the BPE model's
// mutex-guarded word cache, so any thread may call it.
#include <algorithm>
#include <array>
#include <functional>
#include <queue>

#include "kvpr/common/error.h"
#include "tokenizer_bpe.h"
#include "tokenizer_utf8.h"

namespace kvpr::tokenizer_detail {
namespace {

// The stand-ins: bytes that are printable Latin-1 map to themselves, the other 68 to U+0100
// upwards in byte order, so every token is printable text (GPT-2's bytes_to_unicode).
struct ByteLevelTables {
  static constexpr std::size_t kMaxStandIn = 256 + 68;
  std::array<std::string, 256> symbols;         // byte -> UTF-8 of its stand-in
  std::array<std::int16_t, kMaxStandIn> bytes;  // stand-in code point -> byte, or -1
};

const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables tables = [] {
    ByteLevelTables t;
    t.bytes.fill(-1);
    char32_t next_stand_in = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : next_stand_in++;
      append_utf8(t.symbols[b], cp);
      t.bytes[cp] = static_cast<std::int16_t>(b);
    }
    return t;
  }();
  return tables;
}

// Words longer than this (whole SentencePiece segments, say) are not worth caching.
constexpr std::size_t kMaxCachedWordBytes = 256;
constexpr std::size_t kMaxCachedWords = 1 << 16;

bool is_ascii_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

class ByteBpeTokenizer final : public Tokenizer {
 public:
  ByteBpeTokenizer(BpeModel model, SpecialIds ids, bool add_prefix_space, bool use_regex)
      : model_(std::move(model)),
        ids_(ids),
        add_prefix_space_(add_prefix_space),
        use_regex_(use_regex) {}

  std::vector<std::int32_t> encode(std::string_view text) const override {
    std::vector<std::int32_t> ids;
    std::string mapped;
    std::string prefixed;
    for (const TextPiece& piece : model_.split_added(text)) {
      if (piece.added_id >= 0) {
        ids.push_back(piece.added_id);
        continue;
      }
      std::string_view segment = piece.text;
      if (add_prefix_space_ && !segment.starts_with(' ')) {
        prefixed = " ";
        prefixed += segment;
        segment = prefixed;
      }
      const auto words = use_regex_ ? gpt2_pre_tokenize(segment) : std::vector{segment};
      for (const std::string_view word : words) {
        mapped.clear();
        for (const char c : word) mapped += byte_level_symbol(static_cast<unsigned char>(c));
        model_.encode_word(mapped, ids);
      }
    }
    return ids;
  }

  // Characters that are not stand-ins (in added tokens such as "<|endoftext|>") pass through as
  // their own UTF-8, as in HF's ByteLevel decoder.
  std::string decode(const std::vector<std::int32_t>& ids) const override {
    const ByteLevelTables& tables = byte_level_tables();
    std::string bytes;
    for (const std::int32_t id : ids) {
      const std::string& token = model_.token_of(id);
      for (std::size_t pos = 0; pos < token.size();) {
        const Utf8Step step = next_utf8(token, pos);
        if (step.valid && step.cp < ByteLevelTables::kMaxStandIn && tables.bytes[step.cp] >= 0) {
          bytes += static_cast<char>(tables.bytes[step.cp]);
        } else {
          bytes.append(token, pos, step.size);
        }
        pos += step.size;
      }
    }
    return replace_invalid_utf8(bytes);
  }

  std::int64_t vocab_size() const override { return model_.vocab_size(); }
  std::optional<std::int32_t> bos_id() const override { return ids_.bos; }
  std::optional<std::int32_t> eos_id() const override { return ids_.eos; }

 private:
  BpeModel model_;
  SpecialIds ids_;
  bool add_prefix_space_;
  bool use_regex_;
};

const nlohmann::json* find_byte_level(const nlohmann::json& step) {
  if (!step.is_object()) return nullptr;
  if (step.value("type", "") == "ByteLevel") return &step;
  if (step.value("type", "") == "Sequence" && step.contains("pretokenizers")) {
    for (const nlohmann::json& inner : step["pretokenizers"]) {
      if (const nlohmann::json* found = find_byte_level(inner)) return found;
    }
  }
  return nullptr;
}

}  // namespace

std::vector<TextPiece> BpeModel::split_added(std::string_view text) const {
  std::vector<TextPiece> pieces;
  std::size_t start = 0;  // beginning of the text not yet emitted
  for (std::size_t pos = 0; pos < text.size(); ++pos) {
    if (!added_first_byte_[static_cast<unsigned char>(text[pos])]) continue;
    const AddedToken* best = nullptr;
    for (const AddedToken& added : added_) {
      if (added.content.empty() || (best && added.content.size() <= best->content.size())) continue;
      if (!text.substr(pos).starts_with(added.content)) continue;
      const std::size_t end = pos + added.content.size();
      if (added.single_word && ((pos > 0 && word_char_before(text, pos)) ||
                                (end < text.size() && is_word_char(text, end)))) {
        continue;
      }
      best = &added;
    }
    if (!best) continue;
    std::size_t begin = pos;
    std::size_t end = pos + best->content.size();
    if (best->lstrip) {
      while (begin > start && is_ascii_space(text[begin - 1])) --begin;
    }
    if (best->rstrip) {
      while (end < text.size() && is_ascii_space(text[end])) ++end;
    }
    if (begin > start) pieces.push_back({text.substr(start, begin - start), start, -1});
    pieces.push_back({text.substr(begin, end - begin), begin, best->id});
    start = end;
    pos = end - 1;
  }
  if (start < text.size()) pieces.push_back({text.substr(start), start, -1});
  return pieces;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<std::int32_t>& symbols) const {
  bool after_unk = false;
  std::string ch;
  for (std::size_t pos = 0; pos < word.size();) {
    const Utf8Step step = next_utf8(word, pos);
    ch.assign(word.substr(pos, step.size));
    pos += step.size;
    if (const auto it = token_to_id_.find(ch); it != token_to_id_.end()) {
      symbols.push_back(it->second);
      after_unk = false;
      continue;
    }
    if (byte_fallback_ && std::all_of(ch.begin(), ch.end(), [&](char c) {
          return byte_ids_[static_cast<unsigned char>(c)] >= 0;
        })) {
      for (const char c : ch) symbols.push_back(byte_ids_[static_cast<unsigned char>(c)]);
      after_unk = false;
      continue;
    }
    // Without an <unk> the character is dropped, as HF does.
    if (unk_id_ && !(fuse_unk_ && after_unk)) symbols.push_back(*unk_id_);
    after_unk = unk_id_.has_value();
  }
}

void BpeModel::merge_symbols(std::vector<std::int32_t>& symbols) const {
  if (symbols.size() < 2) return;
  struct Node {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
    bool alive;
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const auto n = static_cast<std::int32_t>(symbols.size());
  std::vector<Node> nodes(symbols.size());
  for (std::int32_t i = 0; i < n; ++i) nodes[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push = [&](std::int32_t pos) {
    if (pos < 0 || nodes[pos].next < 0) return;
    const auto it = merges_.find(pair_key(nodes[pos].id, nodes[nodes[pos].next].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Node& left = nodes[top.pos];
    if (!left.alive || left.next < 0) continue;
    // Entries go stale when a neighbour merged since they were queued.
    const auto it = merges_.find(pair_key(left.id, nodes[left.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Node& right = nodes[left.next];
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = top.pos;
    push(left.prev);
    push(top.pos);
  }
  symbols.clear();
  for (std::int32_t i = 0; i >= 0; i = nodes[i].next) symbols.push_back(nodes[i].id);
}

void BpeModel::encode_word(std::string_view word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = token_to_id_.find(std::string(word)); it != token_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    const std::lock_guard<std::mutex> lock(cache_->mutex);
    if (const auto it = cache_->words.find(key); it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> symbols;
  initial_symbols(word, symbols);
  merge_symbols(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    const std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() >= kMaxCachedWords) cache_->words.clear();
    cache_->words.emplace(std::move(key), std::move(symbols));
  }
}

const std::string& byte_level_symbol(unsigned char byte) {
  return byte_level_tables().symbols[byte];
}

std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(BpeModel model, SpecialIds ids,
                                                   const nlohmann::json* root) {
  if (root == nullptr) {
    return std::make_unique<ByteBpeTokenizer>(std::move(model), ids, false, true);
  }
  const nlohmann::json normalizer = root->value("normalizer", nlohmann::json());
  if (!normalizer.is_null()) {
    raise(ErrorKind::unimplemented, model.source(), ": normalizer ",
          quoted(normalizer.value("type", "?")), " is not supported for byte-level BPE");
  }
  const nlohmann::json pre_tokenizer = root->value("pre_tokenizer", nlohmann::json());
  const nlohmann::json* byte_level = find_byte_level(pre_tokenizer);
  if (byte_level == nullptr) {
    raise(ErrorKind::unimplemented, model.source(),
          ": byte-level decoder without a ByteLevel pre_tokenizer");
  }
  // Other steps in a Sequence (Split with a custom regex, as GPT-4-style tokenizers have) would
  // change where words break; refusing them beats encoding silently differently.
  if (byte_level != &pre_tokenizer) {
    for (const nlohmann::json& step : pre_tokenizer["pretokenizers"]) {
      if (&step != byte_level) {
        raise(ErrorKind::unimplemented, model.source(), ": pre_tokenizer step ",
              quoted(step.value("type", "?")), " is not supported for byte-level BPE");
      }
    }
  }
  const bool add_prefix_space = byte_level->value("add_prefix_space", false);
  const bool use_regex = byte_level->value("use_regex", true);
  return std::make_unique<ByteBpeTokenizer>(std::move(model), ids, add_prefix_space, use_regex);
}

}  // namespace kvpr::tokenizer_detail
