// Tokenizers for generated (random-weight) models. The model generator needs a tokenizer.json
// with exactly vocab_size ids that HF tokenizers loads and that round-trips any text, and it
// should tokenize English roughly like a real one so that prompts have realistic lengths. So:
// specials and the byte alphabet first, then merges learned by a small BPE trainer on the
// built-in corpus below, then, once the corpus has no pairs left, synthetic merges drawn from
// `seed` until the size is exact. Every merge joins two tokens already in the vocab into a new,
// unique string, so the file is consistent however large it is. Deterministic: the same
// arguments always write the same bytes.
#include <algorithm>
#include <fstream>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "kvpr/common/error.h"
#include "kvpr/common/tokenizer.h"
#include "tokenizer_bpe.h"

namespace kvpr {
namespace {

using nlohmann::ordered_json;
using tokenizer_detail::byte_level_symbol;

constexpr std::int64_t kMaxVocabSize = 1 << 20;
constexpr std::size_t kMaxSyntheticTokenBytes = 48;
constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁"

// Plain prose written for this file; what matters is ordinary English word and letter frequency.
constexpr std::string_view kCorpus =
    R"(The river runs past the old mill and under the stone bridge before it
turns toward the sea. In the morning the water is cold and clear, and you can see the small
fish that wait in the shade of the reeds. Farmers on both banks have used the river for as long
as anyone can remember. They take water for their fields in the dry months, and in the spring
they watch the level rise with the melting snow from the hills.
A good teacher does not give the answer at once. She asks a question, waits, and then asks
another one that is a little easier, until the student finds the answer on his own. It takes
more time, but what is learned this way is not forgotten. The same is true of a book that is
read slowly: every page leaves something behind.
When the wind changes in the evening, the air smells of rain. The birds fly low over the
fields and the cattle gather near the trees. By the time the first drops fall, the people in
the village have brought in the washing and closed the windows. Then the storm passes, the sky
clears, and the stars come out one by one.
Numbers help us to think clearly about the world. If a train leaves the station at 9:15 and
travels at 80 miles per hour, it will reach a town 120 miles away at 10:45. A recipe that
serves 4 people needs twice as much of everything to serve 8. In 1969, people first walked on
the Moon; in 2012, a small robot began to explore the surface of Mars.
Language changes slowly but without rest. Words that were common a hundred years ago now
sound strange, and new words appear every year for new things and new ideas. Still, a careful
reader can understand a letter written long ago, because the shape of a sentence changes much
more slowly than the words inside it.
There is a small shop at the corner of the market where an old man repairs clocks and
watches. He works with great patience, holding tiny springs and wheels with fine tools, and he
says that every clock has its own character. Some run fast, some run slow, and some stop for no
reason that anyone can find. "A clock is like a person," he likes to say. "You have to listen."
The library was quiet except for the sound of pages turning. Near the window, a girl was
writing notes about the history of the city: who built the first walls, why the port grew so
quickly, and how the great fire of the last century changed the streets. She wanted to know
what life had been like for ordinary people, not only for kings and generals.
Science begins with simple questions. Why is the sky blue? Why does ice float on water? How
do plants turn light into food? Each answer leads to new questions, and the work is never
finished. That is not a weakness of science but its strength: it can always learn something
new, and it can correct its own mistakes.)";

// SentencePiece's letters are the corpus's single bytes, so it must be ASCII.
constexpr bool is_ascii(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}
static_assert(is_ascii(kCorpus));

struct Rng {  // SplitMix64: tiny, fast, and the same on every platform
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::int32_t below(std::int32_t n) {
    return static_cast<std::int32_t>(next() % static_cast<std::uint64_t>(n));
  }
};

// The vocabulary under construction: token strings by id, and the merges that made them.
struct VocabBuilder {
  std::int64_t target = 0;
  std::vector<std::string> tokens;
  std::unordered_map<std::string, std::int32_t> ids;
  std::vector<std::pair<std::string, std::string>> merges;

  bool full() const { return static_cast<std::int64_t>(tokens.size()) >= target; }
  bool add(const std::string& token) {
    if (full() || !ids.emplace(token, static_cast<std::int32_t>(tokens.size())).second) {
      return false;
    }
    tokens.push_back(token);
    return true;
  }
  bool add_merge(std::int32_t a, std::int32_t b) {
    if (!add(tokens[a] + tokens[b])) return false;
    merges.emplace_back(tokens[a], tokens[b]);
    return true;
  }
};

struct Word {
  std::vector<std::int32_t> symbols;
  std::int64_t count;
};

// Classic BPE training: merge the most frequent adjacent pair (ties: lowest ids) everywhere, until
// the vocab is full or no word has two symbols left. A pair whose string already exists is never
// merged, so each merge adds a new token.
void learn_merges(std::vector<Word>& words, VocabBuilder& vocab) {
  std::unordered_set<std::uint64_t> banned;
  std::unordered_map<std::uint64_t, std::int64_t> counts;
  const auto key = [](std::int32_t x, std::int32_t y) {
    return (static_cast<std::uint64_t>(x) << 32) | static_cast<std::uint32_t>(y);
  };
  while (!vocab.full()) {
    counts.clear();
    for (const Word& word : words) {
      for (std::size_t i = 0; i + 1 < word.symbols.size(); ++i) {
        counts[key(word.symbols[i], word.symbols[i + 1])] += word.count;
      }
    }
    std::uint64_t best = 0;
    std::int64_t best_count = 0;
    for (const auto& [pair, count] : counts) {  // unordered: the tie rule makes it deterministic
      if (!banned.contains(pair) && (count > best_count || (count == best_count && pair < best))) {
        best = pair;
        best_count = count;
      }
    }
    if (best_count == 0) return;
    const auto a = static_cast<std::int32_t>(best >> 32);
    const auto b = static_cast<std::int32_t>(best & 0xFFFFFFFFu);
    if (!vocab.add_merge(a, b)) {
      banned.insert(best);
      continue;
    }
    const std::int32_t merged = static_cast<std::int32_t>(vocab.tokens.size()) - 1;
    for (Word& word : words) {
      std::vector<std::int32_t> out;
      for (std::size_t i = 0; i < word.symbols.size(); ++i) {
        const bool hit =
            i + 1 < word.symbols.size() && word.symbols[i] == a && word.symbols[i + 1] == b;
        out.push_back(hit ? merged : word.symbols[i]);
        i += hit ? 1 : 0;
      }
      word.symbols = std::move(out);
    }
  }
}

// Fills the vocab with merges of a random token and (mostly) a random base symbol, so lengths
// grow slowly. `first` is the first mergeable id; [first, base_end) are the single symbols.
// `word_start` (sentencepiece) may only begin a token, keeping "▁" where real vocabs have it.
void add_synthetic_merges(VocabBuilder& vocab, std::int32_t first, std::int32_t base_end,
                          std::uint64_t seed, std::string_view word_start) {
  Rng rng{seed};
  const std::int64_t needed = vocab.target - static_cast<std::int64_t>(vocab.tokens.size());
  for (std::int64_t attempts = 0; !vocab.full(); ++attempts) {
    if (attempts > 64 * needed + 100000) {
      fail("tokenizer generator: no new merge found after ", attempts, " tries");
    }
    const auto size = static_cast<std::int32_t>(vocab.tokens.size());
    const std::int32_t a = first + rng.below(size - first);
    const std::int32_t b =
        first + rng.below((rng.next() & 3) != 0 ? base_end - first : size - first);
    if (vocab.tokens[a].size() + vocab.tokens[b].size() > kMaxSyntheticTokenBytes) continue;
    if (!word_start.empty() && vocab.tokens[b].starts_with(word_start)) continue;
    vocab.add_merge(a, b);
  }
}

ordered_json added_token(std::int32_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

// "<bos> $A" as HF writes TemplateProcessing; the loader reads bos from it.
ordered_json bos_template(const std::string& bos, std::int32_t bos_id) {
  const ordered_json special = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
  const ordered_json seq_a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
  const ordered_json seq_b = {{"Sequence", {{"id", "B"}, {"type_id", 1}}}};
  return {{"type", "TemplateProcessing"},
          {"single", {special, seq_a}},
          {"pair", {special, seq_a, seq_b}},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

ordered_json byte_bpe_json(VocabBuilder& vocab, std::uint64_t seed) {
  const std::vector<std::string> specials = {"<s>", "<pad>", "</s>", "<unk>"};
  for (const std::string& special : specials) vocab.add(special);
  const auto first = static_cast<std::int32_t>(vocab.tokens.size());
  for (int byte = 0; byte < 256; ++byte) {
    vocab.add(byte_level_symbol(static_cast<unsigned char>(byte)));
  }
  std::map<std::string, std::int64_t> counts;
  for (const std::string_view word : tokenizer_detail::gpt2_pre_tokenize(kCorpus)) {
    ++counts[std::string(word)];
  }
  std::vector<Word> words;
  for (const auto& [text, count] : counts) {
    Word word{{}, count};
    for (const char c : text) word.symbols.push_back(first + static_cast<unsigned char>(c));
    words.push_back(std::move(word));
  }
  learn_merges(words, vocab);
  add_synthetic_merges(vocab, first, first + 256, seed, "");
  ordered_json root;
  root["added_tokens"] = ordered_json::array();
  for (std::int32_t id = 0; id < first; ++id) {
    root["added_tokens"].push_back(added_token(id, specials[id]));
  }
  const ordered_json byte_level = {{"type", "ByteLevel"},
                                   {"add_prefix_space", false},
                                   {"trim_offsets", true},
                                   {"use_regex", true}};
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = byte_level;
  root["post_processor"] = bos_template("</s>", 2);  // OPT starts sequences with </s>
  root["decoder"] = byte_level;
  return root;
}

ordered_json sentencepiece_json(VocabBuilder& vocab, std::uint64_t seed) {
  const std::vector<std::string> specials = {"<unk>", "<s>", "</s>"};
  for (const std::string& special : specials) vocab.add(special);
  for (int byte = 0; byte < 256; ++byte) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    vocab.add({'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'});
  }
  const auto first = static_cast<std::int32_t>(vocab.tokens.size());
  vocab.add(std::string(kMetaspace));
  // The corpus's characters by falling frequency; whitespace is "▁" or byte fallback.
  std::map<char, std::int64_t> char_counts;
  for (const char c : kCorpus) {
    if (c != ' ' && c != '\n') ++char_counts[c];
  }
  std::vector<std::pair<char, std::int64_t>> chars(char_counts.begin(), char_counts.end());
  std::stable_sort(chars.begin(), chars.end(),
                   [](const auto& x, const auto& y) { return x.second > y.second; });
  for (const auto& [c, count] : chars) vocab.add(std::string(1, c));
  const auto base_end = static_cast<std::int32_t>(vocab.tokens.size());
  if (!vocab.full()) {  // every corpus character is in: words can be trained on
    std::map<std::string, std::int64_t> counts;
    std::string word;
    for (const char c : std::string(kCorpus) + " ") {
      if (c != ' ' && c != '\n') {
        word += c;
      } else if (!word.empty()) {
        ++counts[word];
        word.clear();
      }
    }
    std::vector<Word> words;
    for (const auto& [text, count] : counts) {
      Word w{{first}, count};
      for (const char c : text) w.symbols.push_back(vocab.ids.at(std::string(1, c)));
      words.push_back(std::move(w));
    }
    learn_merges(words, vocab);
    add_synthetic_merges(vocab, first, base_end, seed, kMetaspace);
  }
  ordered_json root;
  root["added_tokens"] = ordered_json::array();
  for (std::int32_t id = 0; id < 3; ++id) {
    root["added_tokens"].push_back(added_token(id, specials[id]));
  }
  const ordered_json replace_space = {
      {"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}};
  root["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers", {{{"type", "Prepend"}, {"prepend", kMetaspace}}, replace_space}}};
  root["pre_tokenizer"] = nullptr;
  root["post_processor"] = bos_template("<s>", 1);
  const ordered_json replace_metaspace = {
      {"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}};
  root["decoder"] = {{"type", "Sequence"},
                     {"decoders",
                      {replace_metaspace,
                       {{"type", "ByteFallback"}},
                       {{"type", "Fuse"}},
                       {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  return root;
}

}  // namespace

void write_generated_tokenizer(const std::filesystem::path& dir, TokenizerKind kind,
                               std::int64_t vocab_size, std::uint64_t seed) {
  const bool byte_bpe = kind == TokenizerKind::byte_bpe;
  // The specials and the byte alphabet; SentencePiece also needs "▁", or spaces would decode
  // as the byte pieces of "▁" rather than as spaces.
  const std::int64_t minimum = byte_bpe ? 4 + 256 : 3 + 256 + 1;
  if (vocab_size < minimum || vocab_size > kMaxVocabSize) {
    fail("generated tokenizer: vocab_size ", vocab_size, " is outside [", minimum, ", ",
         kMaxVocabSize, "] for ", byte_bpe ? "byte_bpe" : "sentencepiece");
  }
  VocabBuilder vocab;
  vocab.target = vocab_size;
  ordered_json fields = byte_bpe ? byte_bpe_json(vocab, seed) : sentencepiece_json(vocab, seed);
  // Written in id order, straight into the object's vector: ordered_json's own insert looks
  // keys up linearly, which is quadratic for 50k tokens. VocabBuilder already made them unique.
  ordered_json vocab_object = ordered_json::object();
  auto& entries = static_cast<ordered_json::object_t::Container&>(
      vocab_object.get_ref<ordered_json::object_t&>());
  entries.reserve(vocab.tokens.size());
  for (std::size_t id = 0; id < vocab.tokens.size(); ++id) {
    entries.emplace_back(vocab.tokens[id], id);
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [left, right] : vocab.merges) {
    merges.push_back(std::string(left).append(" ").append(right));
  }
  // HF's own field order, so the file diffs cleanly against real ones.
  ordered_json root = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  for (const char* key :
       {"added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"}) {
    root[key] = std::move(fields[key]);
  }
  root["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", byte_bpe ? ordered_json() : ordered_json("<unk>")},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", !byte_bpe},
                   {"byte_fallback", !byte_bpe},
                   {"vocab", std::move(vocab_object)},
                   {"merges", std::move(merges)}};

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const std::filesystem::path path = dir / "tokenizer.json";
  const std::filesystem::path partial = dir / "tokenizer.json.partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out << root.dump(2) << '\n';
    if (!out.flush()) fail("cannot write generated tokenizer ", partial.string());
  }
  // Renamed into place so that a reader never sees half a file.
  std::filesystem::rename(partial, path, ec);
  if (ec) fail("cannot rename ", partial.string(), " to ", path.string(), ": ", ec.message());
}

}  // namespace kvpr
