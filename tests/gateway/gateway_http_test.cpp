// The gateway over HTTP with a real client: both APIs plain and streamed, n > 1, stop strings and
// UTF-8 split across tokens, usage counts, logprobs shapes and echo.
#include <gtest/gtest.h>

#include "http_support.h"

namespace kvpr::gateway {
namespace {

using testing::chat;
using testing::completion;
using testing::json;
using testing::Served;
using testing::sse_chunks;

const std::string kText = "Hello world, this is the end. More text";

std::vector<std::int32_t> ids(const std::string& text) {
  return testing::test_tokenizer().encode(text);
}

TEST(GatewayHttp, CompletionCarriesTextFinishReasonAndUsage) {
  Served s(ids(kText));
  const auto res = s.post("/v1/completions", completion("Hi there", {{"max_tokens", 100}}));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "test-model");
  EXPECT_TRUE(body["id"].get<std::string>().starts_with("cmpl-"));
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["text"], kText);
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());
  const auto prompt = 1 + ids("Hi there").size();  // BOS first
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt);
  EXPECT_EQ(body["usage"]["completion_tokens"], ids(kText).size());
  EXPECT_EQ(body["usage"]["total_tokens"], prompt + ids(kText).size());
  const auto requests = s.upstream.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].prompt.front(), *testing::test_tokenizer().bos_id());
  EXPECT_EQ(requests[0].max_tokens, 100);
  EXPECT_TRUE(requests[0].sampling.greedy());
}

TEST(GatewayHttp, MaxTokensEndsWithLength) {
  Served s(ids(kText));
  const auto res = s.post("/v1/completions", completion("Hi", {{"max_tokens", 3}}));
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  const auto script = ids(kText);
  EXPECT_EQ(body["choices"][0]["text"],
            testing::test_tokenizer().decode({script.begin(), script.begin() + 3}));
}

TEST(GatewayHttp, ChatCompletionIsAnAssistantMessage) {
  Served s(ids(kText));
  const auto res = s.post("/v1/chat/completions", chat("Say something", {{"max_tokens", 50}}));
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_TRUE(body["id"].get<std::string>().starts_with("chatcmpl-"));
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], kText);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  const auto& t = testing::test_tokenizer();
  const auto prompt =
      apply_chat_template(ChatFormat::plain, {{ChatMessage::Role::user, "Say something"}}, t);
  EXPECT_EQ(s.upstream.requests()[0].prompt, prompt);
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt.size());
}

TEST(GatewayHttp, StreamedCompletionAddsUpWithUsageLast) {
  Served s(ids(kText));
  const auto res =
      s.post("/v1/completions", completion("Hi", {{"stream", true},
                                                  {"max_tokens", 100},
                                                  {"stream_options", {{"include_usage", true}}}}));
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const auto chunks = sse_chunks(res->body);
  ASSERT_GE(chunks.size(), 3u);
  std::string text;
  for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["object"], "text_completion");
    ASSERT_EQ(chunks[i]["choices"].size(), 1u);
    EXPECT_TRUE(chunks[i].contains("usage") && chunks[i]["usage"].is_null());
    text += chunks[i]["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, kText);
  EXPECT_EQ(chunks[chunks.size() - 2]["choices"][0]["finish_reason"], "stop");
  const json& last = chunks.back();
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"]["completion_tokens"], ids(kText).size());
  EXPECT_EQ(last["usage"]["total_tokens"],
            last["usage"]["prompt_tokens"].get<int>() + ids(kText).size());
}

TEST(GatewayHttp, StreamedChatStartsWithTheRoleAndEndsWithFinishReason) {
  Served s(ids(kText));
  const auto res =
      s.post("/v1/chat/completions", chat("x", {{"stream", true}, {"max_completion_tokens", 4}}));
  ASSERT_EQ(res->status, 200) << res->body;
  const auto chunks = sse_chunks(res->body);
  ASSERT_GE(chunks.size(), 2u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (const json& c : chunks) {
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_FALSE(c.contains("usage"));
    text += c["choices"][0]["delta"].value("content", "");
  }
  const auto script = ids(kText);
  EXPECT_EQ(text, testing::test_tokenizer().decode({script.begin(), script.begin() + 4}));
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "length");
}

TEST(GatewayHttp, SeveralChoicesAreIndexedAndCounted) {
  Served s(ids(kText));
  auto res = s.post("/v1/completions", completion("Hi", {{"n", 3}, {"max_tokens", 5}}));
  ASSERT_EQ(res->status, 200) << res->body;
  json body = json::parse(res->body);
  ASSERT_EQ(body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(body["choices"][i]["text"], body["choices"][0]["text"]);
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], 15);
  EXPECT_EQ(s.upstream.requests()[0].n, 3);

  res = s.post("/v1/chat/completions", chat("Hi", {{"n", 2}, {"stream", true}}));
  ASSERT_EQ(res->status, 200) << res->body;
  std::string texts[2];
  int finished = 0;
  for (const json& c : sse_chunks(res->body)) {
    const int index = c["choices"][0]["index"];
    ASSERT_TRUE(index == 0 || index == 1);
    texts[index] += c["choices"][0]["delta"].value("content", "");
    finished += c["choices"][0]["finish_reason"].is_null() ? 0 : 1;
  }
  EXPECT_EQ(texts[0], kText);
  EXPECT_EQ(texts[1], kText);
  EXPECT_EQ(finished, 2);
}

TEST(GatewayHttp, StopStringAcrossTokensEndsTheSequenceUpstream) {
  Served s(ids(kText));
  for (const bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "plain");
    const auto before = s.upstream.stopped_count();
    const auto res = s.post(
        "/v1/completions",
        completion("Hi", {{"stop", {"zzz", "the end"}}, {"stream", stream}, {"max_tokens", 100}}));
    ASSERT_EQ(res->status, 200) << res->body;
    std::string text;
    std::string finish;
    if (stream) {
      for (const json& c : sse_chunks(res->body)) {
        text += c["choices"][0]["text"].get<std::string>();
        if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
      }
    } else {
      const json body = json::parse(res->body);
      text = body["choices"][0]["text"];
      finish = body["choices"][0]["finish_reason"];
    }
    EXPECT_EQ(text, "Hello world, this is ");
    EXPECT_EQ(finish, "stop");
    EXPECT_EQ(s.upstream.stopped_count(), before + 1);
  }
}

TEST(GatewayHttp, Utf8SplitAcrossTokensArrivesWhole) {
  const std::string text = "h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80!";
  Served s(ids(text));
  const auto res =
      s.post("/v1/completions", completion("Hi", {{"stream", true}, {"max_tokens", 100}}));
  ASSERT_EQ(res->status, 200) << res->body;
  std::string joined;
  for (const json& c : sse_chunks(res->body)) {
    const std::string delta = c["choices"][0]["text"];
    EXPECT_EQ(delta.find("\xEF\xBF\xBD"), std::string::npos) << "a replacement character";
    joined += delta;
  }
  EXPECT_EQ(joined, text);
}

TEST(GatewayHttp, CompletionLogprobsHaveColumnsPerToken) {
  Served s(ids(kText));
  const auto res =
      s.post("/v1/completions", completion("Hi", {{"logprobs", 2}, {"max_tokens", 4}}));
  ASSERT_EQ(res->status, 200) << res->body;
  const json lp = json::parse(res->body)["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 4u);
  ASSERT_EQ(lp["token_logprobs"].size(), 4u);
  ASSERT_EQ(lp["text_offset"].size(), 4u);
  ASSERT_EQ(lp["top_logprobs"].size(), 4u);
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_FLOAT_EQ(lp["token_logprobs"][0].get<float>(), -0.25F);
  EXPECT_TRUE(lp["top_logprobs"][0].is_object());
  EXPECT_LE(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(s.upstream.requests()[0].sampling.logprobs, 2);
  std::string joined;
  for (const json& t : lp["tokens"]) joined += t.get<std::string>();
  EXPECT_EQ(joined, json::parse(res->body)["choices"][0]["text"]);
}

TEST(GatewayHttp, ChatLogprobsAreAContentList) {
  Served s(ids(kText));
  for (const bool stream : {false, true}) {
    const auto res = s.post(
        "/v1/chat/completions",
        chat("Hi",
             {{"logprobs", true}, {"top_logprobs", 3}, {"max_tokens", 3}, {"stream", stream}}));
    ASSERT_EQ(res->status, 200) << res->body;
    json content = json::array();
    if (stream) {
      for (const json& c : sse_chunks(res->body)) {
        const json& lp = c["choices"][0]["logprobs"];
        if (!lp.is_null())
          content.insert(content.end(), lp["content"].begin(), lp["content"].end());
      }
    } else {
      content = json::parse(res->body)["choices"][0]["logprobs"]["content"];
    }
    ASSERT_EQ(content.size(), 3u);
    for (const json& entry : content) {
      EXPECT_TRUE(entry["token"].is_string());
      EXPECT_TRUE(entry["logprob"].is_number());
      EXPECT_TRUE(entry["bytes"].is_array());
      ASSERT_EQ(entry["top_logprobs"].size(), 3u);
      EXPECT_TRUE(entry["top_logprobs"][0].contains("token"));
      EXPECT_TRUE(entry["top_logprobs"][0].contains("bytes"));
    }
  }
}

TEST(GatewayHttp, EchoPutsThePromptFirst) {
  Served s(ids(kText));
  auto res = s.post("/v1/completions", completion("Once", {{"echo", true}, {"max_tokens", 2}}));
  ASSERT_EQ(res->status, 200) << res->body;
  const std::string text = json::parse(res->body)["choices"][0]["text"];
  EXPECT_TRUE(text.starts_with("Once")) << text;
  EXPECT_GT(text.size(), 4u);
  res = s.post("/v1/completions",
               completion("Once", {{"echo", true}, {"max_tokens", 2}, {"stream", true}}));
  const auto chunks = sse_chunks(res->body);
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks[0]["choices"][0]["text"], "Once");
}

// echo with logprobs scores the prompt upstream: prompt token t (t >= 1) gets the upstream's
// score of it (the fake's -0.5 t), the first none; the generated tokens follow; a stream's first
// chunk holds the prompt's entries only, so no entry comes twice.
TEST(GatewayHttp, EchoWithLogprobsScoresThePrompt) {
  Served s(ids(kText));
  const json ask = completion("Once upon", {{"echo", true}, {"max_tokens", 2}, {"logprobs", 1}});
  auto res = s.post("/v1/completions", ask);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  const json& lp = body["choices"][0]["logprobs"];
  const auto prompt = body["usage"]["prompt_tokens"].get<std::size_t>();
  ASSERT_GE(prompt, 2u);
  ASSERT_EQ(lp["token_logprobs"].size(), prompt + 2);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  for (std::size_t t = 1; t < prompt; ++t) {
    EXPECT_FLOAT_EQ(lp["token_logprobs"][t].get<float>(), -0.5f * static_cast<float>(t)) << t;
    EXPECT_EQ(lp["top_logprobs"][t].size(), 1u);
  }
  EXPECT_EQ(lp["text_offset"][prompt], std::string("Once upon").size());
  EXPECT_EQ(s.upstream.requests().back().score_prompt, true);

  json streamed = ask;
  streamed["stream"] = true;
  res = s.post("/v1/completions", streamed);
  std::size_t entries = 0;
  for (const json& c : sse_chunks(res->body)) {
    const json& l = c["choices"][0]["logprobs"];
    if (!l.is_null()) entries += l["token_logprobs"].size();
  }
  EXPECT_EQ(entries, prompt + 2);
  res = s.post("/v1/completions", completion("Once", {{"echo", true}, {"max_tokens", 2}}));
  EXPECT_EQ(s.upstream.requests().back().score_prompt, false) << "without logprobs: no scoring";

  // What one request may make the gateway list is bounded: 128 choices x 100 prompt tokens x
  // (1 + 20) log-probabilities is over 2^18.
  const std::size_t asked = s.upstream.requests().size();
  json big = completion("", {{"echo", true}, {"max_tokens", 1}, {"logprobs", 20}, {"n", 128}});
  big["prompt"] = std::vector<int>(100, 5);
  res = s.post("/v1/completions", big);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "logprobs") << res->body;
  EXPECT_EQ(s.upstream.requests().size(), asked) << "refused before any work";
  big["n"] = 12;  // 12 x 100 x 21 = 25200: served
  res = s.post("/v1/completions", big);
  EXPECT_EQ(res->status, 200) << res->body.substr(0, 300);
}

}  // namespace
}  // namespace kvpr::gateway
