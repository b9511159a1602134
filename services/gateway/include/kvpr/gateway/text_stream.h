// From generated token ids to the text a client sees, one sequence at a time.
//
// IncrementalDetokenizer turns ids into text deltas that are always complete UTF-8. It decodes a
// short window of ids twice — up to the last emitted token and up to the newest — and emits the
// difference (the method of Hugging Face's text-generation-inference), so a tokenizer whose decode
// of a single token differs from its decode in context (SentencePiece's leading space) still
// yields exactly decode(all ids). A token that ends inside a UTF-8 character decodes to U+FFFD at
// the end; its text waits until a later token completes the character (or until finish()).
//
// StopMatcher finds stop strings in that text, across token boundaries: it holds back any tail of
// the text that could be the start of a stop string, and on a match emits only what comes before
// it. Owned by one request's handler; not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "kvpr/common/tokenizer.h"

namespace kvpr::gateway {

class IncrementalDetokenizer {
 public:
  // `skip`: ids that decode to nothing (BOS/EOS and other specials the client should not see).
  IncrementalDetokenizer(const Tokenizer& tokenizer, std::unordered_set<std::int32_t> skip)
      : tokenizer_(&tokenizer), skip_(std::move(skip)) {}

  // The new text that `id` completes (may be empty). Throws Error for an id the tokenizer lacks.
  std::string push(std::int32_t id);
  // Whatever is still held (an incomplete character, decoded with U+FFFD); call once, at the end.
  std::string finish();

 private:
  const Tokenizer* tokenizer_;
  std::unordered_set<std::int32_t> skip_;
  std::vector<std::int32_t> ids_;
  std::size_t prefix_ = 0;  // ids_[prefix_, read_) were decoded and emitted already
  std::size_t read_ = 0;
  std::size_t held_emitted_ = 0;  // bytes of the pending window's text emitted before its end
};

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  struct Result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string matched: `text` ends just before it; push no more
  };
  Result push(const std::string& delta);
  // The held-back text, which can no longer become a stop string.
  std::string finish();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

// One sequence's text: ids in, deltas out, stop strings applied. The length of text emitted so
// far gives the completions API's text_offset.
class SequenceText {
 public:
  SequenceText(const Tokenizer& tokenizer, std::unordered_set<std::int32_t> skip,
               std::vector<std::string> stops)
      : detokenizer_(tokenizer, std::move(skip)), stops_(std::move(stops)) {}

  StopMatcher::Result push(std::int32_t id);
  std::string finish();  // the rest, once the sequence ended for another reason
  std::size_t emitted_bytes() const { return emitted_; }

 private:
  IncrementalDetokenizer detokenizer_;
  StopMatcher stops_;
  std::size_t emitted_ = 0;
};

// True when `text` ends inside a UTF-8 character (a lead byte whose continuation bytes are not all
// there yet) or with U+FFFD (what tokenizers decode an incomplete byte sequence to).
bool ends_incomplete(const std::string& text);

}  // namespace kvpr::gateway
