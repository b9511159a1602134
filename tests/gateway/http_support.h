// A started Gateway over a FakeUpstream on a free port, and a real HTTP client (cpp-httplib) with
// helpers that post JSON and split a server-sent-event body into its JSON chunks.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fake_upstream.h"
#include "kvpr/gateway/gateway.h"

namespace kvpr::gateway::testing {

using nlohmann::json;

inline constexpr const char* kModelName = "test-model";
inline constexpr std::int64_t kPositions = 256;

struct Served {
  explicit Served(std::vector<std::int32_t> script, std::vector<std::string> keys = {})
      : upstream(std::move(script)), tokenizer(&test_tokenizer()) {
    GatewayOptions options;
    options.model_name = kModelName;
    options.max_positions = kPositions;
    options.api_keys = std::move(keys);
    options.threads = 8;
    options.registry = &registry;
    options.read_timeout = std::chrono::seconds(5);
    options.drain_timeout = std::chrono::seconds(10);
    gateway = std::make_unique<Gateway>(options, upstream, *tokenizer);
    gateway->start();
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", gateway->port());
    c.set_read_timeout(10, 0);
    return c;
  }

  httplib::Result post(const std::string& path, const json& body,
                       const httplib::Headers& headers = {}) const {
    return client().Post(path.c_str(), headers, body.dump(), "application/json");
  }

  prometheus::Registry registry;  // before the gateway, which registers into it
  FakeUpstream upstream;
  const Tokenizer* tokenizer;
  std::unique_ptr<Gateway> gateway;
};

// The JSON chunks of an SSE body; checks the framing (every event is "data: ...\n\n") and that
// the last event is [DONE].
inline std::vector<json> sse_chunks(const std::string& body) {
  std::vector<json> chunks;
  bool done = false;
  std::size_t pos = 0;
  while (pos < body.size()) {
    const std::size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event at " << pos;
    if (end == std::string::npos) break;
    const std::string event = body.substr(pos, end - pos);
    pos = end + 2;
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    EXPECT_FALSE(done) << "an event after [DONE]";
    if (event == "data: [DONE]") {
      done = true;
      continue;
    }
    chunks.push_back(json::parse(event.substr(6)));
  }
  EXPECT_TRUE(done) << "no data: [DONE]";
  return chunks;
}

inline json completion(const std::string& prompt, json extra = json::object()) {
  json body = {{"model", kModelName}, {"prompt", prompt}, {"temperature", 0}};
  body.update(extra);
  return body;
}

inline json chat(const std::string& user, json extra = json::object()) {
  json body = {{"model", kModelName},
               {"messages", json::array({{{"role", "user"}, {"content", user}}})},
               {"temperature", 0}};
  body.update(extra);
  return body;
}

}  // namespace kvpr::gateway::testing
