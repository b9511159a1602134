// Bad request bodies with the reply each must get: the status and the field the error names (in
// `param` or, when param is null, in the message). Shared by the parser's unit test and the HTTP
// test (which also checks that the server keeps serving after all of them). The served model is
// "test-model" with a vocabulary of 1024 and 256 positions.
#pragma once

#include <string>
#include <vector>

namespace kvpr::gateway::testing {

struct Malformed {
  bool chat;
  std::string body;
  int status;
  std::string field;  // what param (or the message) names
};

inline std::vector<Malformed> malformed_bodies() {
  const std::string m = R"("model": "test-model", )";
  const auto ones = [](int n) {
    std::string s = "1";
    for (int i = 1; i < n; ++i) s += ",1";
    return s;
  };
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}], )";
  return {
      // Not a JSON object at all.
      {false, "", 400, "JSON"},
      {false, "not json", 400, "JSON"},
      {false, "{\"model\": ", 400, "JSON"},
      {false, "[1, 2, 3]", 400, "object"},
      {false, "\"a string\"", 400, "object"},
      {false, "{\"model\": \"test-model\", \"prompt\": \"\xC3\x28\"}", 400, "JSON"},  // bad UTF-8
      {false, std::string("{\"model\": \"test-model\", \"prompt\": \"a\0b\"}", 37), 400, "JSON"},
      // model
      {false, R"({"prompt": "hi"})", 400, "model"},
      {false, R"({"model": 7, "prompt": "hi"})", 400, "model"},
      {false, R"({"model": "gpt-9", "prompt": "hi"})", 404, "model"},
      // prompt
      {false, "{" + m + R"("max_tokens": 3})", 400, "prompt"},
      {false, "{" + m + R"("prompt": ""})", 400, "prompt"},
      {false, "{" + m + R"("prompt": []})", 400, "prompt"},
      {false, "{" + m + R"("prompt": [1, -2]})", 400, "prompt"},
      {false, "{" + m + R"("prompt": [1, 1024]})", 400, "prompt"},
      {false, "{" + m + R"("prompt": [1, 2.5]})", 400, "prompt"},
      {false, "{" + m + R"("prompt": ["a", "b"]})", 400, "prompt"},
      {false, "{" + m + R"("prompt": {"text": "a"}})", 400, "prompt"},
      {false, "{" + m + R"("prompt": 12})", 400, "prompt"},
      // numbers out of range or of the wrong type
      {false, "{" + m + R"("prompt": "hi", "max_tokens": -1})", 400, "max_tokens"},
      {false, "{" + m + R"("prompt": "hi", "max_tokens": 0})", 400, "max_tokens"},
      {false, "{" + m + R"("prompt": "hi", "max_tokens": "10"})", 400, "max_tokens"},
      {false, "{" + m + R"("prompt": "hi", "max_tokens": 1e400})", 400, "JSON"},
      {false, "{" + m + R"("prompt": "hi", "max_tokens": 99999999999999999999})", 400,
       "max_tokens"},
      {false, "{" + m + R"("prompt": "hi", "max_tokens": 1000})", 413, "max_tokens"},
      {false, "{" + m + R"("prompt": "hi", "temperature": 2.5})", 400, "temperature"},
      {false, "{" + m + R"("prompt": "hi", "temperature": -0.1})", 400, "temperature"},
      {false, "{" + m + R"("prompt": "hi", "temperature": "warm"})", 400, "temperature"},
      {false, "{" + m + R"("prompt": "hi", "top_p": 0})", 400, "top_p"},
      {false, "{" + m + R"("prompt": "hi", "top_p": 1.5})", 400, "top_p"},
      {false, "{" + m + R"("prompt": "hi", "top_k": -2})", 400, "top_k"},
      {false, "{" + m + R"("prompt": "hi", "n": 0})", 400, "n"},
      {false, "{" + m + R"("prompt": "hi", "n": 1000})", 400, "n"},
      {false, "{" + m + R"("prompt": "hi", "seed": -5})", 400, "seed"},
      {false, "{" + m + R"("prompt": "hi", "presence_penalty": 3})", 400, "presence_penalty"},
      {false, "{" + m + R"("prompt": "hi", "frequency_penalty": -2.5})", 400, "frequency_penalty"},
      {false, "{" + m + R"("prompt": "hi", "logprobs": 21})", 400, "logprobs"},
      {false, "{" + m + R"("prompt": "hi", "logprobs": true})", 400, "logprobs"},
      {false, "{" + m + R"("prompt": "hi", "echo": "yes"})", 400, "echo"},
      {false, "{" + m + R"("prompt": "hi", "stream": 1})", 400, "stream"},
      {false, "{" + m + R"("prompt": "hi", "stream_options": {"include_usage": true}})", 400,
       "stream_options"},
      {false, "{" + m + R"("prompt": "hi", "stream": true, "stream_options": 3})", 400,
       "stream_options"},
      {false, "{" + m + R"("prompt": "hi", "stop": ""})", 400, "stop"},
      {false, "{" + m + R"("prompt": "hi", "stop": ["a", "b", "c", "d", "e"]})", 400, "stop"},
      {false, "{" + m + R"("prompt": "hi", "stop": [1]})", 400, "stop"},
      {false, "{" + m + R"("prompt": "hi", "best_of": 3})", 400, "best_of"},
      {false, "{" + m + R"("prompt": "hi", "stop_token_ids": [5, 4096]})", 400, "stop_token_ids"},
      {false, "{" + m + R"("prompt": "hi", "ignore_eos": 1})", 400, "ignore_eos"},
      {false, "{" + m + R"("prompt": "hi", "logit_bias": {"5": 100}})", 400, "logit_bias"},
      {false, "{" + m + R"("prompt": [)" + ones(300) + "]}", 413, "prompt"},
      // chat
      {true, R"({"model": "test-model"})", 400, "messages"},
      {true, "{" + m + R"("messages": []})", 400, "messages"},
      {true, "{" + m + R"("messages": "hi"})", 400, "messages"},
      {true, "{" + m + R"("messages": [{"content": "hi"}]})", 400, "messages[0].role"},
      {true, "{" + m + R"("messages": [{"role": "wizard", "content": "hi"}]})", 400,
       "messages[0].role"},
      {true, "{" + m + R"("messages": [{"role": "user"}]})", 400, "messages[0].content"},
      {true, "{" + m + R"("messages": [{"role": "user", "content": 5}]})", 400,
       "messages[0].content"},
      {true, "{" + m + R"("messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       400, "messages[0].content"},
      {true, "{" + m + R"("messages": [3]})", 400, "messages[0]"},
      {true, "{" + m + msgs + R"("logprobs": 3})", 400, "logprobs"},
      {true, "{" + m + msgs + R"("top_logprobs": 5})", 400, "top_logprobs"},
      {true, "{" + m + msgs + R"("logprobs": true, "top_logprobs": 21})", 400, "top_logprobs"},
      {true, "{" + m + msgs + R"("max_completion_tokens": -3})", 400, "max_completion_tokens"},
      {true, "{" + m + msgs + R"("max_tokens": 100000})", 413, "max_tokens"},
      {true, "{" + m + msgs + R"("tools": [{"type": "function"}]})", 400, "tools"},
      {true, "{" + m + msgs + R"("response_format": {"type": "json_object"}})", 400,
       "response_format"},
      {true, "{" + msgs + R"("model": "other"})", 404, "model"},
  };
}

}  // namespace kvpr::gateway::testing
