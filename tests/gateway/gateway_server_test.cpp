// The gateway as a server: malformed bodies answered in OpenAI's shape (and the server still
// serving), API keys, upstream errors, /health, /v1/models, /metrics, a client that goes away
// mid-stream, and stop() draining a stream in flight.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <thread>

#include "http_support.h"
#include "malformed_bodies.h"

namespace kvpr::gateway {
namespace {

using testing::chat;
using testing::completion;
using testing::json;
using testing::Served;
using testing::sse_chunks;

std::vector<std::int32_t> ids(const std::string& text) {
  return testing::test_tokenizer().encode(text);
}

void expect_openai_error(const httplib::Result& res, int status) {
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, status) << res->body;
  const json body = json::parse(res->body);
  ASSERT_TRUE(body.contains("error")) << res->body;
  for (const char* key : {"message", "type", "param", "code"}) {
    EXPECT_TRUE(body["error"].contains(key)) << key << " missing: " << res->body;
  }
}

TEST(GatewayServer, MalformedBodiesAreOpenAIErrorsAndTheServerServesOn) {
  Served s(ids("ok then"));
  const auto cases = testing::malformed_bodies();
  ASSERT_GE(cases.size(), 30u);
  auto client = s.client();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.body.substr(0, 120));
    const auto res = client.Post(c.chat ? "/v1/chat/completions" : "/v1/completions", c.body,
                                 "application/json");
    expect_openai_error(res, c.status);
    const json error = json::parse(res->body)["error"];
    EXPECT_TRUE(error["param"] == c.field ||
                error["message"].get<std::string>().find(c.field) != std::string::npos)
        << res->body;
  }
  EXPECT_TRUE(s.upstream.requests().empty());
  const auto res = s.post("/v1/completions", completion("Hi"));
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], "ok then");
}

TEST(GatewayServer, UnknownRoutesAndOversizedBodiesAreOpenAIErrors) {
  Served s(ids("ok"));
  expect_openai_error(s.client().Get("/v1/nothing"), 404);
  expect_openai_error(
      s.client().Post("/v1/completions", std::string(9U << 20U, 'x'), "application/json"), 413);
}

TEST(GatewayServer, ApiKeysAreRequiredWhenConfigured) {
  Served s(ids("ok"), {"sk-one", "sk-two"});
  auto res = s.post("/v1/completions", completion("Hi"));
  expect_openai_error(res, 401);
  EXPECT_EQ(json::parse(res->body)["error"]["code"], "invalid_api_key");
  expect_openai_error(s.post("/v1/completions", completion("Hi"), {{"Authorization", "Bearer x"}}),
                      401);
  expect_openai_error(s.client().Get("/v1/models"), 401);
  res = s.post("/v1/completions", completion("Hi"), {{"Authorization", "Bearer sk-two"}});
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(s.client().Get("/health")->status, 200);  // probes need no key
}

TEST(GatewayServer, UpstreamErrorsBecomeRetryableReplies) {
  Served s(ids("ok"));
  for (const bool stream : {false, true}) {
    s.upstream.fail_with(ErrorKind::overloaded);
    auto res = s.post("/v1/completions", completion("Hi", {{"stream", stream}}));
    expect_openai_error(res, 503);
    EXPECT_EQ(res->get_header_value("Retry-After"), "1");
    s.upstream.fail_with(ErrorKind::disconnected);
    expect_openai_error(s.post("/v1/chat/completions", chat("Hi", {{"stream", stream}})), 502);
    s.upstream.fail_with(std::nullopt);
    EXPECT_EQ(s.post("/v1/completions", completion("Hi", {{"stream", stream}}))->status, 200);
  }
}

TEST(GatewayServer, HealthFollowsTheWorkers) {
  Served s(ids("ok"));
  auto res = s.client().Get("/health");
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(json::parse(res->body)["status"], "ok");
  s.upstream.set_alive(false);
  res = s.client().Get("/health");
  EXPECT_EQ(res->status, 503);
  EXPECT_NE(json::parse(res->body)["status"], "ok");
}

TEST(GatewayServer, ModelsListsTheServedModel) {
  Served s(ids("ok"));
  const auto res = s.client().Get("/v1/models");
  ASSERT_EQ(res->status, 200);
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "test-model");
  EXPECT_EQ(body["data"][0]["object"], "model");
}

TEST(GatewayServer, MetricsCountRequestsAndTimeTokens) {
  Served s(ids("one two three"));
  ASSERT_EQ(s.post("/v1/completions", completion("Hi", {{"stream", true}}))->status, 200);
  ASSERT_EQ(s.post("/v1/completions", completion("Hi"))->status, 200);
  expect_openai_error(s.post("/v1/completions", json{{"model", "nope"}}), 404);
  const std::vector<std::string> expected = {
      R"(kvpr_http_requests_total{code="200",model_name="test-model",route="/v1/completions"} 2)",
      "code=\"404\"",
      "kvpr_time_to_first_token_seconds_count{model_name=\"test-model\"} 2",
      "kvpr_inter_token_latency_seconds_bucket",
      "kvpr_request_latency_seconds_count{model_name=\"test-model\"} 2",
  };
  // A stream is counted once its response is released, just after the client has the last byte.
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  const auto all_there = [&] {
    return std::all_of(expected.begin(), expected.end(),
                       [&](const std::string& e) { return text.find(e) != std::string::npos; });
  };
  do {
    const auto res = s.client().Get("/metrics");
    ASSERT_EQ(res->status, 200);
    text = res->body;
  } while (!all_there() && std::chrono::steady_clock::now() < deadline);
  for (const std::string& e : expected)
    EXPECT_NE(text.find(e), std::string::npos) << e << "\n" << text;
}

TEST(GatewayServer, ClientGoneMidStreamStopsEverySequence) {
  std::vector<std::int32_t> script;
  for (int i = 0; i < 200; ++i) script.push_back(ids(" a").front());
  Served s(script);
  s.upstream.set_delay(std::chrono::milliseconds(5));
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = completion("Hi", {{"stream", true}, {"n", 2}, {"max_tokens", 200}}).dump();
  req.set_header("Content-Type", "application/json");
  int received = 0;
  req.content_receiver = [&](const char*, std::size_t, std::uint64_t, std::uint64_t) {
    return ++received < 3;  // read a few chunks, then hang up
  };
  auto client = s.client();
  (void)client.send(req);
  client.stop();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.upstream.stopped_count() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(s.upstream.stopped_count(), 2u);
  EXPECT_LT(s.upstream.tokens_delivered(), 300);
  EXPECT_EQ(s.post("/v1/completions", completion("Hi", {{"max_tokens", 2}}))->status, 200);
}

TEST(GatewayServer, StopDrainsAStreamInFlight) {
  std::vector<std::int32_t> script;
  for (int i = 0; i < 30; ++i) script.push_back(ids(" b").front());
  Served s(script);
  s.upstream.set_delay(std::chrono::milliseconds(10));
  auto reply = std::async(std::launch::async, [&] {
    return s.post("/v1/completions", completion("Hi", {{"stream", true}, {"max_tokens", 30}}));
  });
  while (s.upstream.tokens_delivered() == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.gateway->stop();
  const auto res = reply.get();
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  std::string text;
  for (const json& c : sse_chunks(res->body)) text += c["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text.size(), 60u);              // all 30 " b" tokens
  EXPECT_FALSE(s.client().Get("/health"));  // no longer listening
}

TEST(LoadApiKeys, SkipsBlanksAndComments) {
  const auto path =
      std::filesystem::temp_directory_path() / ("kvpr-keys-" + std::to_string(::getpid()));
  std::ofstream(path) << "# keys\nsk-a\n\n  \nsk-b\r\n";
  EXPECT_EQ(load_api_keys(path), (std::vector<std::string>{"sk-a", "sk-b"}));
  std::ofstream(path) << "# none\n";
  EXPECT_THROW(load_api_keys(path), Error);
  std::filesystem::remove(path);
  EXPECT_THROW(load_api_keys(path), Error);
}

}  // namespace
}  // namespace kvpr::gateway
