// The request parsers as pure functions: every field of both APIs read into the typed structs,
// OpenAI's defaults, the error shape, and each malformed body of malformed_bodies.h answered with
// its status and the field it names.
#include "kvpr/gateway/request.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "malformed_bodies.h"

namespace kvpr::gateway {
namespace {

const ModelLimits kLimits{"test-model", 1024, 256};

TEST(ParseCompletion, ReadsEveryField) {
  const auto r = parse_completion_request(R"({
    "model": "test-model", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": 40, "n": 3, "stream": true, "stream_options": {"include_usage": true},
    "stop": ["a", "bc"], "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -1,
    "logprobs": 2, "echo": true, "user": "someone", "best_of": 3,
    "stop_token_ids": [7, 9], "ignore_eos": true})",
                                          kLimits);
  EXPECT_EQ(r.options.model, "test-model");
  EXPECT_EQ(r.prompt_text, "Hello");
  EXPECT_EQ(r.options.max_tokens, 7);
  EXPECT_EQ(r.options.sampling.temperature, 0.5);
  EXPECT_EQ(r.options.sampling.top_p, 0.9);
  EXPECT_EQ(r.options.sampling.top_k, 40);
  EXPECT_EQ(r.options.n, 3);
  EXPECT_TRUE(r.options.stream);
  EXPECT_TRUE(r.options.include_usage);
  EXPECT_EQ(r.options.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(r.options.sampling.seed, 42u);
  EXPECT_EQ(r.options.sampling.presence_penalty, 0.5);
  EXPECT_EQ(r.options.sampling.frequency_penalty, -1);
  EXPECT_EQ(r.options.sampling.logprobs, 2);
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.options.sampling.stop_token_ids, (std::vector<std::int32_t>{7, 9}));
  EXPECT_TRUE(r.options.sampling.ignore_eos);
}

TEST(ParseCompletion, DefaultsAndPromptForms) {
  auto r = parse_completion_request(R"({"model": "test-model", "prompt": [5, 6, 7]})", kLimits);
  EXPECT_EQ(r.prompt_tokens, (std::vector<std::int32_t>{5, 6, 7}));
  EXPECT_FALSE(r.prompt_text);
  EXPECT_FALSE(r.options.max_tokens);
  EXPECT_EQ(r.options.n, 1);
  EXPECT_EQ(r.options.sampling.temperature, 1.0);  // OpenAI's default
  EXPECT_EQ(r.options.sampling.logprobs, -1);
  EXPECT_FALSE(r.options.stream);
  r = parse_completion_request(R"({"model": "test-model", "prompt": ["one"], "stop": "x"})",
                               kLimits);
  EXPECT_EQ(r.prompt_text, "one");
  EXPECT_EQ(r.options.stop, std::vector<std::string>{"x"});
  r = parse_completion_request(R"({"model": "test-model", "prompt": [[9, 8]], "top_k": -1,
                                   "max_tokens": 4.0, "stop": null})",
                               kLimits);
  EXPECT_EQ(r.prompt_tokens, (std::vector<std::int32_t>{9, 8}));
  EXPECT_EQ(r.options.sampling.top_k, 0);
  EXPECT_EQ(r.options.max_tokens, 4);
}

TEST(ParseChat, ReadsMessagesAndChatOnlyFields) {
  const auto r = parse_chat_request(R"({
    "model": "test-model", "max_tokens": 5, "max_completion_tokens": 9,
    "logprobs": true, "top_logprobs": 3, "temperature": 0,
    "messages": [{"role": "system", "content": "s"}, {"role": "developer", "content": "d"},
                 {"role": "user", "content": [{"type": "text", "text": "a"},
                                              {"type": "text", "text": "b"}]},
                 {"role": "assistant", "content": "c", "name": "bot"}]})",
                                    kLimits);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, ChatMessage::Role::system);
  EXPECT_EQ(r.messages[1].role, ChatMessage::Role::system);
  EXPECT_EQ(r.messages[2].content, "ab");
  EXPECT_EQ(r.messages[3].role, ChatMessage::Role::assistant);
  EXPECT_EQ(r.options.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.options.sampling.logprobs, 3);
  EXPECT_TRUE(r.options.sampling.greedy());
}

TEST(ResolveMaxTokens, DefaultsAndContextLimits) {
  GenerationOptions o;
  EXPECT_EQ(resolve_max_tokens(o, 10, false, kLimits), 16);
  EXPECT_EQ(resolve_max_tokens(o, 250, false, kLimits), 6);  // the default shrinks to fit
  EXPECT_EQ(resolve_max_tokens(o, 10, true, kLimits), 246);  // chat: the rest of the context
  o.max_tokens = 246;
  EXPECT_EQ(resolve_max_tokens(o, 10, false, kLimits), 246);
  o.max_tokens = 247;
  try {
    resolve_max_tokens(o, 10, false, kLimits);
    FAIL() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 413);
    EXPECT_EQ(e.param(), "max_tokens");
    EXPECT_EQ(e.code(), "context_length_exceeded");
  }
  o.max_tokens = std::numeric_limits<std::int64_t>::max();  // no overflow
  EXPECT_THROW(resolve_max_tokens(o, 10, false, kLimits), ApiError);
  EXPECT_THROW(resolve_max_tokens({}, 256, true, kLimits), ApiError);
}

TEST(ApiError, HasOpenAIShape) {
  const auto body = nlohmann::json::parse(ApiError(400, "bad 'n'", "n").body());
  EXPECT_EQ(body["error"]["message"], "bad 'n'");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_TRUE(body["error"]["code"].is_null());
  EXPECT_TRUE(nlohmann::json::parse(ApiError(400, "x").body())["error"]["param"].is_null());
}

TEST(ParseRequest, EveryMalformedBodyIsAnErrorNamingItsField) {
  const auto cases = testing::malformed_bodies();
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.body.substr(0, 120));
    try {
      if (c.chat) {
        const auto r = parse_chat_request(c.body, kLimits);
        resolve_max_tokens(r.options, 10, true, kLimits);
      } else {
        const auto r = parse_completion_request(c.body, kLimits);
        const auto n = r.prompt_text ? 3 : static_cast<std::int64_t>(r.prompt_tokens.size());
        resolve_max_tokens(r.options, n, false, kLimits);
      }
      ADD_FAILURE() << "accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), c.status) << e.what();
      EXPECT_TRUE(e.param() == c.field || std::string(e.what()).find(c.field) != std::string::npos)
          << "param '" << e.param() << "', message: " << e.what();
      EXPECT_TRUE(nlohmann::json::accept(e.body()));
    }
  }
}

}  // namespace
}  // namespace kvpr::gateway
