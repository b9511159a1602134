// Incremental detokenizing and stop strings on generated tokenizers: deltas are complete UTF-8 and
// add up to decode(all ids); a character split over byte tokens waits for its last byte; a stop
// string split over tokens is found, held back while it may still match, and cut from the text.
#include "kvpr/gateway/text_stream.h"

#include <gtest/gtest.h>

#include "fake_upstream.h"

namespace kvpr::gateway {
namespace {

using testing::test_tokenizer;

bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const std::size_t n = b < 0x80         ? 1
                          : (b >> 5) == 6  ? 2
                          : (b >> 4) == 14 ? 3
                          : (b >> 3) == 30 ? 4
                                           : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(IncrementalDetokenizer, MultiByteCharactersWaitForTheirLastByte) {
  const Tokenizer& t = test_tokenizer();
  const std::string text =
      "h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80!";  // héllo 日本 😀!
  const auto ids = t.encode(text);
  IncrementalDetokenizer detokenizer(t, {});
  std::string joined;
  int held = 0;
  for (const auto id : ids) {
    const std::string delta = detokenizer.push(id);
    EXPECT_TRUE(valid_utf8(delta)) << "delta of id " << id;
    held += delta.empty() ? 1 : 0;
    joined += delta;
  }
  joined += detokenizer.finish();
  EXPECT_EQ(joined, text);
  EXPECT_GE(held, 5);  // é: 1, 日本: 2 + 2, 😀: 3 tokens that end inside a character
}

TEST(IncrementalDetokenizer, SentencePieceSpacesComeOutAsInDecodeOfAll) {
  const Tokenizer& t = test_tokenizer(TokenizerKind::sentencepiece);
  const std::string text = "Hello world, and the rest of it";
  const auto ids = t.encode(text);
  IncrementalDetokenizer detokenizer(t, {});
  std::string joined;
  for (const auto id : ids) joined += detokenizer.push(id);
  joined += detokenizer.finish();
  EXPECT_EQ(joined, t.decode(ids));
}

TEST(IncrementalDetokenizer, SkippedIdsDecodeToNothing) {
  const Tokenizer& t = test_tokenizer();
  IncrementalDetokenizer detokenizer(t, {*t.eos_id()});
  std::string joined;
  for (const auto id : t.encode("ab")) joined += detokenizer.push(id);
  joined += detokenizer.push(*t.eos_id());
  EXPECT_EQ(joined + detokenizer.finish(), "ab");
}

TEST(IncrementalDetokenizer, AnIncompleteCharacterAtTheEndIsFlushedAsReplacement) {
  const Tokenizer& t = test_tokenizer();
  const auto ids = t.encode("\xE6\x97\xA5");  // 日 as three byte tokens
  ASSERT_GE(ids.size(), 2u);
  IncrementalDetokenizer detokenizer(t, {});
  EXPECT_EQ(detokenizer.push(ids[0]), "");
  EXPECT_EQ(detokenizer.finish(), "\xEF\xBF\xBD");
}

TEST(IncrementalDetokenizer, TextBeforeAnIncompleteTailIsNotHeldBack) {
  // Tokens that each end inside a character (the generated vocabulary has many): the text before
  // each one's incomplete tail comes out with it, not at the end of the stream.
  const Tokenizer& t = test_tokenizer();
  std::vector<std::int32_t> ids;
  for (std::int32_t id = 0; id < t.vocab_size() && ids.size() < 12; ++id) {
    const std::string one = t.decode({id});
    if (ends_incomplete(one) && one.size() > 3 && one[0] != '\xEF') ids.push_back(id);
  }
  ASSERT_GE(ids.size(), 4u) << "no token ends inside a character";
  IncrementalDetokenizer detokenizer(t, {});
  std::string joined;
  std::size_t emitted_early = 0;
  for (const auto id : ids) {
    const std::string delta = detokenizer.push(id);
    EXPECT_TRUE(valid_utf8(delta));
    emitted_early += delta.size();
    joined += delta;
  }
  EXPECT_GT(emitted_early, 0u);
  joined += detokenizer.finish();
  EXPECT_EQ(joined, t.decode(ids));
}

TEST(EndsIncomplete, LeadBytesAndReplacement) {
  EXPECT_FALSE(ends_incomplete(""));
  EXPECT_FALSE(ends_incomplete("abc"));
  EXPECT_TRUE(ends_incomplete("a\xC3"));
  EXPECT_FALSE(ends_incomplete("a\xC3\xA9"));
  EXPECT_TRUE(ends_incomplete("\xF0\x9F\x98"));
  EXPECT_TRUE(ends_incomplete("x\xEF\xBF\xBD"));
}

TEST(StopMatcher, HoldsBackAPossibleStartAndCutsTheMatch) {
  StopMatcher m({"the end"});
  EXPECT_EQ(m.push("this is ").text, "this is ");
  auto r = m.push("th");
  EXPECT_EQ(r.text, "");  // "th" may begin "the end"
  r = m.push("e e");
  EXPECT_EQ(r.text, "");
  EXPECT_FALSE(r.stopped);
  r = m.push("nd. more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcher, ReleasesHeldTextThatStopsMatching) {
  StopMatcher m({"abc", "xyz"});
  EXPECT_EQ(m.push("1ab").text, "1");
  EXPECT_EQ(m.push("d").text, "abd");
  EXPECT_EQ(m.push("x").text, "");
  EXPECT_EQ(m.finish(), "x");
}

TEST(StopMatcher, EarliestOfSeveralStopsWins) {
  StopMatcher m({"world", "lo"});
  const auto r = m.push("hello world");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "hel");
}

TEST(SequenceText, StopStringAcrossTokenBoundaries) {
  const Tokenizer& t = test_tokenizer();
  const auto ids = t.encode("Hello world, this is the end. More text");
  SequenceText text(t, {}, {"the end"});
  std::string out;
  std::size_t used = 0;
  for (const auto id : ids) {
    ++used;
    const auto r = text.push(id);
    out += r.text;
    if (r.stopped) break;
  }
  EXPECT_EQ(out, "Hello world, this is ");
  EXPECT_LT(used, ids.size());  // stopped at the token completing "the end"
  EXPECT_EQ(text.emitted_bytes(), out.size());
}

TEST(SequenceText, FinishReleasesHeldText) {
  const Tokenizer& t = test_tokenizer();
  SequenceText text(t, {}, {"Hello there"});
  std::string out;
  for (const auto id : t.encode("Hello")) out += text.push(id).text;
  EXPECT_EQ(out, "");
  EXPECT_EQ(text.finish(), "Hello");
}

}  // namespace
}  // namespace kvpr::gateway
