// SentencePiece-style BPE as LLaMA-2's tokenizer.json describes it: no pre-tokenizer, a
// normalizer that turns spaces into "▁" and prepends one, BPE with byte fallback (characters
// outside the vocab become <0xNN> pieces), and a decoder chain that undoes all of that. The
// pipeline steps are read from tokenizer.json and applied with HF tokenizers' semantics, so older
// files (Metaspace pre-tokenizer and decoder) work too. Steps this file does not know are an
// Error (unimplemented) naming the file and the step, never a silently different encoding.
//
// Thread safety: immutable after construction but for the BPE model's guarded word cache.
#include <cctype>
#include <string>

#include "kvpr/common/error.h"
#include "tokenizer_bpe.h"
#include "tokenizer_utf8.h"

namespace kvpr::tokenizer_detail {
namespace {

using nlohmann::json;

// One step of a normalizer or decoder chain.
struct Step {
  enum class Kind { prepend, replace, byte_fallback, fuse, strip, metaspace };
  Kind kind;
  std::string from;       // replace: pattern; metaspace: the replacement character
  std::string to;         // prepend / replace: the inserted text; strip: the character removed
  std::size_t start = 0;  // strip: how many leading `to` to remove at most
  std::size_t stop = 0;   // ... and trailing
  bool prefix = true;     // metaspace decoder: drop the replacement character in the first token
};

// HF's Metaspace pre-tokenizer: spaces become `replacement`, which may also be prepended
// (scheme "always", or "first" only for the piece at the start of the input), and the text is
// split before each replacement character when `split` is set.
struct Metaspace {
  std::string replacement = "\xE2\x96\x81";  // "▁"
  std::string scheme = "always";
  bool split = true;
};

void replace_all(std::string& text, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  for (std::size_t pos = text.find(from); pos != std::string::npos;
       pos = text.find(from, pos + to.size())) {
    text.replace(pos, from.size(), to);
  }
}

std::string replace_pattern(const json& step, const std::string& source) {
  const json pattern = step.value("pattern", json());
  if (!pattern.contains("String")) {
    raise(ErrorKind::unimplemented, source, ": Replace pattern ", quoted(pattern.dump()),
          " is not supported (only {\"String\": ...})");
  }
  return pattern["String"].get<std::string>();
}

void parse_steps(const json& step, const std::string& source, const char* what,
                 std::vector<Step>& steps) {
  if (step.is_null()) return;
  const std::string type = step.value("type", "");
  if (type == "Sequence") {
    const char* list = std::string_view(what) == "normalizer" ? "normalizers" : "decoders";
    for (const json& inner : step.at(list)) parse_steps(inner, source, what, steps);
  } else if (type == "Prepend") {
    steps.push_back({Step::Kind::prepend, "", step.at("prepend").get<std::string>()});
  } else if (type == "Replace") {
    steps.push_back({Step::Kind::replace, replace_pattern(step, source),
                     step.at("content").get<std::string>()});
  } else if (type == "ByteFallback") {
    steps.push_back({Step::Kind::byte_fallback, "", ""});
  } else if (type == "Fuse") {
    steps.push_back({Step::Kind::fuse, "", ""});
  } else if (type == "Strip") {
    steps.push_back({Step::Kind::strip, "", step.at("content").get<std::string>(),
                     step.value("start", std::size_t{0}), step.value("stop", std::size_t{0})});
  } else if (type == "Metaspace" && std::string_view(what) == "decoder") {
    Step meta{Step::Kind::metaspace, step.value("replacement", "\xE2\x96\x81"), ""};
    meta.prefix = step.contains("prepend_scheme") ? step["prepend_scheme"] != "never"
                                                  : step.value("add_prefix_space", true);
    steps.push_back(meta);
  } else {
    raise(ErrorKind::unimplemented, source, ": ", what, " step ", quoted(type),
          " is not supported");
  }
}

// HF's ByteFallback decoder: a run of <0xNN> pieces becomes its bytes when they are valid UTF-8,
// else one U+FFFD per byte.
std::vector<std::string> fuse_bytes(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string run;
  std::size_t run_pieces = 0;
  const auto flush = [&] {
    if (run_pieces == 0) return;
    if (is_valid_utf8(run)) {
      out.push_back(run);
    } else {
      for (std::size_t i = 0; i < run_pieces; ++i) out.emplace_back("\xEF\xBF\xBD");
    }
    run.clear();
    run_pieces = 0;
  };
  for (const std::string& token : tokens) {
    const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    if (token.size() == 6 && token.starts_with("<0x") && token[5] == '>' && hex(token[3]) &&
        hex(token[4])) {
      run += static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16));
      ++run_pieces;
    } else {
      flush();
      out.push_back(token);
    }
  }
  flush();
  return out;
}

void apply_decoder_step(const Step& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case Step::Kind::prepend:  // only in normalizers
      break;
    case Step::Kind::replace:
      for (std::string& token : tokens) replace_all(token, step.from, step.to);
      break;
    case Step::Kind::byte_fallback:
      tokens = fuse_bytes(tokens);
      break;
    case Step::Kind::fuse: {
      std::string all;
      for (const std::string& token : tokens) all += token;
      tokens.assign(1, all);
      break;
    }
    case Step::Kind::strip:  // per token, at most `start` leading and `stop` trailing copies
      for (std::string& token : tokens) {
        std::size_t begin = 0;
        for (std::size_t i = 0;
             i < step.start && token.compare(begin, step.to.size(), step.to) == 0; ++i) {
          begin += step.to.size();
        }
        std::size_t end = token.size();
        for (std::size_t i = 0; i < step.stop && end >= begin + step.to.size() &&
                                token.compare(end - step.to.size(), step.to.size(), step.to) == 0;
             ++i) {
          end -= step.to.size();
        }
        token = token.substr(begin, end - begin);
      }
      break;
    case Step::Kind::metaspace:
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        replace_all(tokens[i], step.from, i == 0 && step.prefix ? "" : " ");
      }
      break;
  }
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(BpeModel model, SpecialIds ids, std::vector<Step> normalizer,
                         std::optional<Metaspace> metaspace,
                         std::optional<std::vector<Step>> decoder)
      : model_(std::move(model)),
        ids_(ids),
        normalizer_(std::move(normalizer)),
        metaspace_(std::move(metaspace)),
        decoder_(std::move(decoder)) {}

  std::vector<std::int32_t> encode(std::string_view text) const override {
    std::vector<std::int32_t> ids;
    for (const TextPiece& piece : model_.split_added(text)) {
      if (piece.added_id >= 0) {
        ids.push_back(piece.added_id);
        continue;
      }
      // HF normalizes each piece between added tokens on its own, so Prepend applies to each.
      std::string normalized(piece.text);
      for (const Step& step : normalizer_) {
        if (step.kind == Step::Kind::prepend && !normalized.empty()) normalized.insert(0, step.to);
        if (step.kind == Step::Kind::replace) replace_all(normalized, step.from, step.to);
      }
      if (!metaspace_) {
        model_.encode_word(normalized, ids);
        continue;
      }
      const Metaspace& meta = *metaspace_;
      replace_all(normalized, " ", meta.replacement);
      const bool prepend = meta.scheme == "always" || (meta.scheme == "first" && piece.offset == 0);
      if (prepend && !normalized.starts_with(meta.replacement)) {
        normalized.insert(0, meta.replacement);
      }
      if (!meta.split) {
        model_.encode_word(normalized, ids);
        continue;
      }
      // Split before each replacement character, which stays with the word after it.
      std::size_t begin = 0;
      for (std::size_t pos = normalized.find(meta.replacement, 1); pos != std::string::npos;
           pos = normalized.find(meta.replacement, pos + 1)) {
        model_.encode_word(std::string_view(normalized).substr(begin, pos - begin), ids);
        begin = pos;
      }
      model_.encode_word(std::string_view(normalized).substr(begin), ids);
    }
    return ids;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const std::int32_t id : ids) tokens.push_back(model_.token_of(id));
    std::string text;
    if (!decoder_) {  // HF joins the raw tokens with spaces when there is no decoder
      for (std::size_t i = 0; i < tokens.size(); ++i) text += (i == 0 ? "" : " ") + tokens[i];
      return text;
    }
    for (const Step& step : *decoder_) apply_decoder_step(step, tokens);
    for (const std::string& token : tokens) text += token;
    return replace_invalid_utf8(text);
  }

  std::int64_t vocab_size() const override { return model_.vocab_size(); }
  std::optional<std::int32_t> bos_id() const override { return ids_.bos; }
  std::optional<std::int32_t> eos_id() const override { return ids_.eos; }

 private:
  BpeModel model_;
  SpecialIds ids_;
  std::vector<Step> normalizer_;        // Prepend and Replace steps only
  std::optional<Metaspace> metaspace_;  // the pre-tokenizer, when there is one
  std::optional<std::vector<Step>> decoder_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(BpeModel model, SpecialIds ids,
                                                        const json& root) {
  const std::string& source = model.source();
  std::vector<Step> normalizer;
  parse_steps(root.value("normalizer", json()), source, "normalizer", normalizer);
  for (const Step& step : normalizer) {
    if (step.kind != Step::Kind::prepend && step.kind != Step::Kind::replace) {
      raise(ErrorKind::unimplemented, source, ": normalizer has a decoder-only step");
    }
  }
  std::optional<Metaspace> metaspace;
  const json pre_tokenizer = root.value("pre_tokenizer", json());
  if (!pre_tokenizer.is_null()) {
    if (pre_tokenizer.value("type", "") != "Metaspace") {
      raise(ErrorKind::unimplemented, source, ": pre_tokenizer ",
            quoted(pre_tokenizer.value("type", "?")),
            " is not supported for SentencePiece BPE (only Metaspace or none)");
    }
    Metaspace meta;
    meta.replacement = pre_tokenizer.value("replacement", meta.replacement);
    meta.scheme = pre_tokenizer.contains("prepend_scheme")
                      ? pre_tokenizer["prepend_scheme"].get<std::string>()
                  : pre_tokenizer.value("add_prefix_space", true) ? "always"
                                                                  : "never";
    meta.split = pre_tokenizer.value("split", true);
    metaspace = meta;
  }
  std::optional<std::vector<Step>> decoder;
  if (const json step = root.value("decoder", json()); !step.is_null()) {
    decoder.emplace();
    parse_steps(step, source, "decoder", *decoder);
  }
  return std::make_unique<SentencePieceTokenizer>(std::move(model), ids, std::move(normalizer),
                                                  std::move(metaspace), std::move(decoder));
}

}  // namespace kvpr::tokenizer_detail
