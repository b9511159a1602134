// The OpenAI-compatible requests the gateway accepts, as typed structs, and the pure functions that
// parse and check them. Every byte a client sends reaches these first, so they never crash on any
// input (tests/fuzz/fuzz_gateway_request.cpp): a body is either a request whose every field is in
// range, or an ApiError that carries the HTTP status and OpenAI's error body — the message names
// the field and the value, `param` the field.
//
// Fields of OpenAI's that change nothing here (user, an empty logit_bias, …) and unknown fields
// are ignored, as most OpenAI-compatible servers do; ones that would change the reply but are
// not supported (best_of other than 1 or n, suffix, logit_bias, tools, response_format other than
// text) are an error. Extensions, as in vLLM: top_k, stop_token_ids, ignore_eos.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/common/sampling.h"

namespace kvpr::gateway {

// An error reply in OpenAI's shape:
//   {"error": {"message": ..., "type": ..., "param": ... | null, "code": ... | null}}
// Thrown by the parsers and by the gateway's request handling; caught once, in the HTTP handler.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {})
      : std::runtime_error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}

  int status() const { return status_; }
  const std::string& param() const { return param_; }  // empty: null
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }  // empty: null
  std::string body() const;                          // the JSON text of the reply

 private:
  int status_;
  std::string param_;
  std::string type_;
  std::string code_;
};

// What the served model allows; the parsers check requests against it.
struct ModelLimits {
  std::string model;               // the served name; a request naming another is a 404
  std::int64_t vocab = 0;          // token ids of a prompt lie in [0, vocab)
  std::int64_t max_positions = 0;  // prompt tokens + max_tokens must fit
};

inline constexpr std::int64_t kMaxChoices = 128;       // n
inline constexpr std::size_t kMaxStopStrings = 4;      // stop
inline constexpr std::size_t kMaxStopBytes = 1024;     // each stop string
inline constexpr std::size_t kMaxStopTokenIds = 64;    // stop_token_ids (an extension)
inline constexpr std::int64_t kDefaultMaxTokens = 16;  // completions' default

// Fields both APIs share.
struct GenerationOptions {
  std::string model;
  std::optional<std::int64_t> max_tokens;  // unset: completions 16, chat the rest of the context
  std::int64_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::vector<std::string> stop;
  SamplingParams sampling;  // sampling.logprobs: -1 none, else the top-n count
};

struct CompletionRequest {
  GenerationOptions options;
  std::optional<std::string> prompt_text;   // a string prompt (or an array of one string) …
  std::vector<std::int32_t> prompt_tokens;  // … or token ids, as sent
  bool echo = false;
};

struct ChatMessage {
  enum class Role { system, user, assistant };
  Role role = Role::user;
  std::string content;
};

struct ChatRequest {
  GenerationOptions options;
  std::vector<ChatMessage> messages;
  bool logprobs = false;  // chat's logprobs is a bool; top_logprobs gives the count
};

// Parse a request body. Throws ApiError: 400 (invalid_request_error) for bad JSON, a wrong type or
// an out-of-range value; 404 (code model_not_found) for another model than limits.model.
CompletionRequest parse_completion_request(std::string_view body, const ModelLimits& limits);
ChatRequest parse_chat_request(std::string_view body, const ModelLimits& limits);

// The max_tokens a request runs with, once its prompt is known in tokens: the one asked for, or
// completions' default, or (chat) what the context has left. Throws ApiError 413 when the prompt is
// empty of room: prompt alone, or prompt + max_tokens, exceeds limits.max_positions.
std::int64_t resolve_max_tokens(const GenerationOptions& options, std::int64_t prompt_tokens,
                                bool is_chat, const ModelLimits& limits);

}  // namespace kvpr::gateway
