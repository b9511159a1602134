// The two request parsers and the prompt-length check. Field readers: request_fields.h.
#include "kvpr/gateway/request.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "kvpr/common/error.h"
#include "request_fields.h"

namespace kvpr::gateway {

using fields::bad;
using fields::find;
using fields::get_bool;
using fields::get_int;
using nlohmann::json;

std::string ApiError::body() const {
  json error = {{"message", what()},
                {"type", type_},
                {"param", param_.empty() ? json() : json(param_)},
                {"code", code_.empty() ? json() : json(code_)}};
  return json{{"error", std::move(error)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

constexpr std::int64_t kMaxInt = std::numeric_limits<std::int64_t>::max();

std::vector<std::int32_t> token_ids(const json& ids, const json& prompt,
                                    const ModelLimits& limits) {
  std::vector<std::int32_t> tokens;
  tokens.reserve(ids.size());
  for (const json& id : ids) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() >= limits.vocab) {
      bad("prompt", str("a string or an array of token ids in [0, ", limits.vocab, ")"), prompt);
    }
    tokens.push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
  }
  return tokens;
}

// prompt: a string, an array of token ids, or an array holding one of those.
void read_prompt(const json& object, const ModelLimits& limits, CompletionRequest& request) {
  const json* prompt = find(object, "prompt");
  if (prompt == nullptr) throw ApiError(400, "'prompt' is required", "prompt");
  const json* one = prompt;
  if (prompt->is_array() && !prompt->empty() && !(*prompt)[0].is_number()) {
    if (prompt->size() != 1) {
      throw ApiError(400,
                     str("'prompt' holds ", prompt->size(),
                         " prompts; batched prompts are not supported, send one per request"),
                     "prompt");
    }
    one = &(*prompt)[0];
  }
  if (one->is_string()) {
    request.prompt_text = one->get<std::string>();
    if (request.prompt_text->empty()) throw ApiError(400, "'prompt' must not be empty", "prompt");
  } else if (one->is_array()) {
    if (one->empty()) throw ApiError(400, "'prompt' must not be empty", "prompt");
    request.prompt_tokens = token_ids(*one, *prompt, limits);
  } else {
    bad("prompt", "a string or an array of token ids", *prompt);
  }
}

// content: a string, or an array of {"type": "text", "text": ...} parts (joined).
std::string read_content(const json& message, const std::string& field) {
  const json* content = find(message, "content");
  if (content == nullptr)
    throw ApiError(400, str("'", field, ".content' is required"), field + ".content");
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) bad(field + ".content", "a string or an array of text parts", *content);
  std::string text;
  for (const json& part : *content) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      bad(field + ".content", R"(text parts ({"type": "text", "text": ...}))", part);
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> read_messages(const json& object) {
  const json* messages = find(object, "messages");
  if (messages == nullptr) throw ApiError(400, "'messages' is required", "messages");
  if (!messages->is_array() || messages->empty()) {
    bad("messages", "a non-empty array of messages", *messages);
  }
  std::vector<ChatMessage> out;
  out.reserve(messages->size());
  for (std::size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string field = str("messages[", i, "]");
    if (!message.is_object()) bad(field, "an object with 'role' and 'content'", message);
    const json* role = find(message, "role");
    if (role == nullptr)
      throw ApiError(400, str("'", field, ".role' is required"), field + ".role");
    ChatMessage m;
    if (*role == "system" || *role == "developer") {
      m.role = ChatMessage::Role::system;
    } else if (*role == "user") {
      m.role = ChatMessage::Role::user;
    } else if (*role == "assistant") {
      m.role = ChatMessage::Role::assistant;
    } else {
      bad(field + ".role", "one of 'system', 'developer', 'user', 'assistant'", *role);
    }
    m.content = read_content(message, field);
    out.push_back(std::move(m));
  }
  return out;
}

// best_of and suffix: accepted only where they change nothing.
void reject_completion_extras(const json& object, const GenerationOptions& options) {
  if (const auto best_of = get_int(object, "best_of", 1, kMaxChoices)) {
    if (*best_of != 1 && *best_of != options.n) {
      throw ApiError(400, str("'best_of' ", *best_of, " is not supported (only 1 or n)"),
                     "best_of");
    }
  }
  if (const auto suffix = fields::get_string(object, "suffix"); suffix && !suffix->empty()) {
    throw ApiError(400, "'suffix' is not supported", "suffix");
  }
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body, const ModelLimits& limits) {
  const json object = fields::parse_object(body);
  CompletionRequest request;
  request.options = fields::get_generation_options(object, limits);
  read_prompt(object, limits, request);
  request.options.max_tokens = get_int(object, "max_tokens", 1, kMaxInt);
  request.options.sampling.logprobs =
      static_cast<std::int32_t>(get_int(object, "logprobs", 0, kMaxLogprobs).value_or(-1));
  request.echo = get_bool(object, "echo").value_or(false);
  reject_completion_extras(object, request.options);
  return request;
}

ChatRequest parse_chat_request(std::string_view body, const ModelLimits& limits) {
  const json object = fields::parse_object(body);
  ChatRequest request;
  request.options = fields::get_generation_options(object, limits);
  request.messages = read_messages(object);
  // max_completion_tokens replaces the deprecated max_tokens; when both are sent it wins.
  request.options.max_tokens = get_int(object, "max_completion_tokens", 1, kMaxInt);
  if (!request.options.max_tokens) {
    request.options.max_tokens = get_int(object, "max_tokens", 1, kMaxInt);
  }
  request.logprobs = get_bool(object, "logprobs").value_or(false);
  const auto top = get_int(object, "top_logprobs", 0, kMaxLogprobs);
  if (top && !request.logprobs) {
    throw ApiError(400, "'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  }
  request.options.sampling.logprobs =
      request.logprobs ? static_cast<std::int32_t>(top.value_or(0)) : -1;
  if (const json* format = find(object, "response_format")) {
    if (!format->is_object() || format->value("type", json()) != "text") {
      throw ApiError(400, str("'response_format' ", fields::shown(*format), " is not supported"),
                     "response_format");
    }
  }
  return request;
}

std::int64_t resolve_max_tokens(const GenerationOptions& options, std::int64_t prompt_tokens,
                                bool is_chat, const ModelLimits& limits) {
  if (prompt_tokens <= 0) throw ApiError(400, "the prompt has no tokens", "prompt");
  const std::int64_t room = limits.max_positions - prompt_tokens;
  if (room <= 0) {
    throw ApiError(413,
                   str("the prompt has ", prompt_tokens, " tokens, which leaves no room in model '",
                       limits.model, "''s ", limits.max_positions, " positions"),
                   is_chat ? "messages" : "prompt", "invalid_request_error",
                   "context_length_exceeded");
  }
  if (!options.max_tokens) return is_chat ? room : std::min(kDefaultMaxTokens, room);
  if (*options.max_tokens > room) {
    throw ApiError(
        413,
        str("max_tokens ", *options.max_tokens, " plus the prompt's ", prompt_tokens,
            " tokens exceeds model '", limits.model, "''s ", limits.max_positions, " positions"),
        "max_tokens", "invalid_request_error", "context_length_exceeded");
  }
  return *options.max_tokens;
}

}  // namespace kvpr::gateway
