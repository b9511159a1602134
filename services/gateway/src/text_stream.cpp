#include "kvpr/gateway/text_stream.h"

#include <algorithm>
#include <string_view>
#include <utility>

namespace kvpr::gateway {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
// Ids decoded before the emitted ones, for context: enough for SentencePiece's leading space and
// for a character split over up to four byte tokens.
constexpr std::size_t kContextIds = 5;

// The length of `text` without what a later token may still change: trailing U+FFFD characters
// (an incomplete character decoded as a replacement) and a trailing incomplete raw sequence.
std::size_t stable_length(const std::string& text) {
  std::size_t n = text.size();
  while (n >= kReplacement.size() &&
         std::string_view(text).substr(n - kReplacement.size(), kReplacement.size()) ==
             kReplacement) {
    n -= kReplacement.size();
  }
  std::size_t continuation = 0;
  for (std::size_t i = n; i > 0 && continuation < 4; --i) {
    const auto byte = static_cast<unsigned char>(text[i - 1]);
    if ((byte & 0xC0U) == 0x80U) {
      ++continuation;
      continue;
    }
    std::size_t need = 1;
    if ((byte & 0xE0U) == 0xC0U) {
      need = 2;
    } else if ((byte & 0xF0U) == 0xE0U) {
      need = 3;
    } else if ((byte & 0xF8U) == 0xF0U) {
      need = 4;
    }
    return continuation + 1 < need ? i - 1 : n;
  }
  return n;
}

}  // namespace

bool ends_incomplete(const std::string& text) {
  return stable_length(text) != text.size();
}

std::string IncrementalDetokenizer::push(std::int32_t id) {
  if (skip_.contains(id)) return {};
  ids_.push_back(id);
  const auto begin = ids_.begin() + static_cast<std::ptrdiff_t>(prefix_);
  const std::string before =
      tokenizer_->decode(std::vector<std::int32_t>(begin, begin + (read_ - prefix_)));
  const std::string after = tokenizer_->decode(std::vector<std::int32_t>(begin, ids_.end()));
  const std::size_t from = before.size() + held_emitted_;  // what this window already gave
  if (ends_incomplete(after)) {
    // Text before the incomplete tail is final: emit it now rather than when (or if) a later
    // token completes the character — a tokenizer whose tokens keep ending mid-character would
    // otherwise hold the whole stream back until the end.
    const std::size_t stable = stable_length(after);
    if (stable <= from || after.compare(0, before.size(), before) != 0) return {};
    held_emitted_ += stable - from;
    return after.substr(from, stable - from);
  }
  if (after.size() <= from) return {};
  // Keep a little context before the next window, so that its decode starts as this one did.
  read_ = ids_.size();
  prefix_ = read_ > kContextIds ? read_ - kContextIds : 0;
  held_emitted_ = 0;
  // `after` extends `before` for every tokenizer kvpr loads; if a decoder ever rewrote earlier
  // text, emitting the longer tail is the closest to right that a stream can do.
  if (after.compare(0, before.size(), before) == 0) return after.substr(from);
  return after.substr(std::min(from, after.size()));
}

std::string IncrementalDetokenizer::finish() {
  if (read_ == ids_.size()) return {};
  const auto begin = ids_.begin() + static_cast<std::ptrdiff_t>(prefix_);
  const std::string before =
      tokenizer_->decode(std::vector<std::int32_t>(begin, begin + (read_ - prefix_)));
  const std::string after = tokenizer_->decode(std::vector<std::int32_t>(begin, ids_.end()));
  read_ = ids_.size();
  const std::size_t from = before.size() + std::exchange(held_emitted_, 0);
  return after.size() > from ? after.substr(from) : std::string();
}

StopMatcher::Result StopMatcher::push(const std::string& delta) {
  held_ += delta;
  if (stops_.empty()) return {std::exchange(held_, {}), false};
  // The earliest match wins; each stop string is searched from the start of the held text, which
  // never contains a whole stop string (it would have matched when it arrived).
  std::size_t first = std::string::npos;
  for (const std::string& stop : stops_) first = std::min(first, held_.find(stop));
  if (first != std::string::npos) {
    Result result{held_.substr(0, first), true};
    held_.clear();
    return result;
  }
  // Hold back the longest tail of the text that is a proper prefix of some stop string.
  std::size_t keep = 0;
  for (const std::string& stop : stops_) {
    for (std::size_t n = std::min(stop.size() - 1, held_.size()); n > keep; --n) {
      if (std::string_view(held_).substr(held_.size() - n) == std::string_view(stop).substr(0, n)) {
        keep = n;
        break;
      }
    }
  }
  Result result{held_.substr(0, held_.size() - keep), false};
  held_.erase(0, held_.size() - keep);
  return result;
}

std::string StopMatcher::finish() {
  return std::exchange(held_, {});
}

StopMatcher::Result SequenceText::push(std::int32_t id) {
  StopMatcher::Result result = stops_.push(detokenizer_.push(id));
  emitted_ += result.text.size();
  return result;
}

std::string SequenceText::finish() {
  StopMatcher::Result result = stops_.push(detokenizer_.finish());
  std::string text = std::move(result.text);
  if (!result.stopped) text += stops_.finish();
  emitted_ += text.size();
  return text;
}

}  // namespace kvpr::gateway
