// Tokenizers of the checkpoints kvpr runs: byte-level BPE (GPT-2, OPT) from tokenizer.json or
// vocab.json + merges.txt, and SentencePiece-style BPE with byte fallback from tokenizer.json
// (LLaMA-2). Encoding adds no special tokens; callers add BOS where the model expects it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvpr {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  // Unknown ids are an Error naming the id.
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  virtual std::optional<std::int32_t> bos_id() const = 0;
  virtual std::optional<std::int32_t> eos_id() const = 0;
};

// Loads DIR/tokenizer.json, else DIR/vocab.json + DIR/merges.txt. Error when none is usable.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json);
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::filesystem::path& vocab_json,
                                               const std::filesystem::path& merges_txt);

// Writes a tokenizer.json with exactly vocab_size entries for a generated model: byte-level BPE
// (kind "byte_bpe", GPT-2 pre-tokenizer, OPT's specials) or SentencePiece BPE with byte fallback
// (kind "sentencepiece", <unk> <s> </s> and <0xNN> pieces), with merges learned from a built-in
// English corpus and completed deterministically from `seed`.
enum class TokenizerKind { byte_bpe, sentencepiece };
void write_generated_tokenizer(const std::filesystem::path& dir, TokenizerKind kind,
                               std::int64_t vocab_size, std::uint64_t seed);

}  // namespace kvpr
