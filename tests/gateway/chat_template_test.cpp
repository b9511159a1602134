// Chat templates: LLaMA-2's format with BOS/EOS as ids, the plain fallback, and how a checkpoint's
// tokenizer_config.json picks between them.
#include "kvpr/gateway/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>

#include "fake_upstream.h"

namespace kvpr::gateway {
namespace {

using testing::test_tokenizer;
using Role = ChatMessage::Role;

std::vector<std::int32_t> concat(std::initializer_list<std::vector<std::int32_t>> parts) {
  std::vector<std::int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(ChatTemplate, Llama2PutsTheSystemPromptInTheFirstTurnAndSpecialsAsIds) {
  const Tokenizer& t = test_tokenizer(TokenizerKind::sentencepiece);
  const std::vector<ChatMessage> messages = {{Role::system, "Be brief."},
                                             {Role::user, " Hi "},
                                             {Role::assistant, "Hello."},
                                             {Role::user, "Again"}};
  const auto ids = apply_chat_template(ChatFormat::llama2, messages, t);
  const std::int32_t bos = *t.bos_id();
  const std::int32_t eos = *t.eos_id();
  const auto expected =
      concat({{bos},
              t.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. "),
              {eos, bos},
              t.encode("[INST] Again [/INST]")});
  EXPECT_EQ(ids, expected);
}

TEST(ChatTemplate, PlainFallbackPrefixesRolesAndEndsWithTheAssistant) {
  const Tokenizer& t = test_tokenizer();
  const std::vector<ChatMessage> messages = {{Role::system, "sys"}, {Role::user, "question"}};
  const auto ids = apply_chat_template(ChatFormat::plain, messages, t);
  EXPECT_EQ(ids, concat({{*t.bos_id()}, t.encode("system: sys\nuser: question\nassistant:")}));
  EXPECT_EQ(apply_chat_template(ChatFormat::plain, messages, t, false),
            t.encode("system: sys\nuser: question\nassistant:"));
}

TEST(ChatTemplate, FormatFromTokenizerConfig) {
  EXPECT_EQ(chat_format_of(""), ChatFormat::plain);
  EXPECT_EQ(chat_format_of("{{ bos_token + '[INST] ' + content }}"), ChatFormat::llama2);
  EXPECT_EQ(chat_format_of("<|im_start|>{{ role }}"), ChatFormat::plain);

  const auto dir =
      std::filesystem::temp_directory_path() / ("kvpr-chat-template-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_EQ(load_chat_format(dir), ChatFormat::plain);  // no file
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"chat_template": "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"})";
  EXPECT_EQ(load_chat_format(dir), ChatFormat::llama2);
  std::ofstream(dir / "tokenizer_config.json") << R"({"model_max_length": 2048})";
  EXPECT_EQ(load_chat_format(dir), ChatFormat::plain);
  std::ofstream(dir / "tokenizer_config.json") << "{not json";
  EXPECT_THROW(load_chat_format(dir), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvpr::gateway
