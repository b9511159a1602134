#include "request_fields.h"

#include <cmath>
#include <limits>

#include "kvpr/common/error.h"

namespace kvpr::gateway::fields {
namespace {

constexpr std::size_t kShownChars = 80;

// The name of a JSON type as OpenAI's messages say it.
std::string_view type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    default:
      return "number";
  }
}

}  // namespace

std::string shown(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > kShownChars) {
    // Cut on a UTF-8 character boundary so that the message stays valid UTF-8.
    std::size_t cut = kShownChars;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0U) == 0x80U) --cut;
    text = text.substr(0, cut) + "...";
  }
  return text;
}

void bad(std::string_view field, std::string_view must_be, const json& value) {
  throw ApiError(
      400,
      str("'", field, "' must be ", must_be, ", got ", shown(value), " (", type_name(value), ")"),
      std::string(field));
}

json parse_object(std::string_view body) {
  json object;
  try {
    object = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, str("the request body is not valid JSON: ", e.what()));
  }
  if (!object.is_object()) {
    throw ApiError(400, str("the request body must be a JSON object, got ", type_name(object)));
  }
  return object;
}

const json* find(const json& object, std::string_view field) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> get_bool(const json& object, std::string_view field) {
  const json* value = find(object, field);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) bad(field, "a boolean", *value);
  return value->get<bool>();
}

std::optional<std::int64_t> get_int(const json& object, std::string_view field, std::int64_t lo,
                                    std::int64_t hi) {
  const json* value = find(object, field);
  if (value == nullptr) return std::nullopt;
  const std::string must_be = str("an integer in [", lo, ", ", hi, "]");
  if (value->is_number_integer() && !value->is_number_unsigned()) {
    const auto v = value->get<std::int64_t>();
    if (v < lo || v > hi) bad(field, must_be, *value);
    return v;
  }
  if (value->is_number_unsigned()) {
    const auto v = value->get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(hi) || (lo > 0 && v < static_cast<std::uint64_t>(lo))) {
      bad(field, must_be, *value);
    }
    return static_cast<std::int64_t>(v);
  }
  if (value->is_number_float()) {
    const double v = value->get<double>();
    // 2^63 is exactly representable; anything at or past it does not fit an int64.
    if (!std::isfinite(v) || std::floor(v) != v || v < static_cast<double>(lo) || v >= 0x1p63 ||
        static_cast<std::int64_t>(v) > hi) {
      bad(field, must_be, *value);
    }
    return static_cast<std::int64_t>(v);
  }
  bad(field, must_be, *value);
}

std::optional<double> get_number(const json& object, std::string_view field, double lo, double hi,
                                 bool open_lo) {
  const json* value = find(object, field);
  if (value == nullptr) return std::nullopt;
  const std::string must_be = str("a number in ", open_lo ? "(" : "[", lo, ", ", hi, "]");
  if (!value->is_number()) bad(field, must_be, *value);
  const double v = value->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi || (open_lo && v == lo)) bad(field, must_be, *value);
  return v;
}

std::optional<std::string> get_string(const json& object, std::string_view field) {
  const json* value = find(object, field);
  if (value == nullptr) return std::nullopt;
  if (!value->is_string()) bad(field, "a string", *value);
  return value->get<std::string>();
}

namespace {

std::vector<std::string> get_stop(const json& object) {
  const json* value = find(object, "stop");
  if (value == nullptr) return {};
  const auto check = [&](const json& item) {
    if (!item.is_string() || item.get_ref<const std::string&>().empty() ||
        item.get_ref<const std::string&>().size() > kMaxStopBytes) {
      bad("stop",
          str("a non-empty string of at most ", kMaxStopBytes, " bytes or an array of ", "at most ",
              kMaxStopStrings, " such strings"),
          *value);
    }
    return item.get<std::string>();
  };
  if (value->is_string()) return {check(*value)};
  if (!value->is_array() || value->size() > kMaxStopStrings) {
    bad("stop", str("a string or an array of at most ", kMaxStopStrings, " strings"), *value);
  }
  std::vector<std::string> stop;
  for (const json& item : *value) stop.push_back(check(item));
  return stop;
}

void reject_unsupported(const json& object) {
  if (const json* bias = find(object, "logit_bias")) {
    if (!bias->is_object()) bad("logit_bias", "an object", *bias);
    if (!bias->empty()) throw ApiError(400, "'logit_bias' is not supported", "logit_bias");
  }
  for (const char* field : {"tools", "functions"}) {
    if (const json* value = find(object, field); value != nullptr && !value->empty()) {
      throw ApiError(400, str("'", field, "' (tool calling) is not supported"), field);
    }
  }
}

}  // namespace

GenerationOptions get_generation_options(const json& object, const ModelLimits& limits) {
  GenerationOptions options;
  const json* model = find(object, "model");
  if (model == nullptr) throw ApiError(400, "'model' is required", "model");
  if (!model->is_string()) bad("model", "a string", *model);
  options.model = model->get<std::string>();
  if (options.model != limits.model) {
    throw ApiError(404,
                   str("the model ", shown(*model), " does not exist; this server serves '",
                       limits.model, "'"),
                   "model", "invalid_request_error", "model_not_found");
  }
  options.n = get_int(object, "n", 1, kMaxChoices).value_or(1);
  options.stream = get_bool(object, "stream").value_or(false);
  if (const json* stream_options = find(object, "stream_options")) {
    if (!stream_options->is_object()) bad("stream_options", "an object", *stream_options);
    if (!options.stream) {
      throw ApiError(400, "'stream_options' is only allowed when 'stream' is true",
                     "stream_options");
    }
    options.include_usage = get_bool(*stream_options, "include_usage").value_or(false);
  }
  options.stop = get_stop(object);
  reject_unsupported(object);

  SamplingParams& s = options.sampling;
  s.temperature = get_number(object, "temperature", 0, 2).value_or(1.0);
  s.top_p = get_number(object, "top_p", 0, 1, /*open_lo=*/true).value_or(1.0);
  // top_k (an extension, as in vLLM): -1 and 0 both mean all tokens; k >= vocab is all as well.
  const std::int64_t top_k =
      get_int(object, "top_k", -1, std::numeric_limits<std::int32_t>::max()).value_or(0);
  s.top_k = top_k < 0 || (limits.vocab > 0 && top_k >= limits.vocab) ? 0 : top_k;
  if (const auto seed = get_int(object, "seed", 0, std::numeric_limits<std::int64_t>::max())) {
    s.seed = static_cast<std::uint64_t>(*seed);
  }
  s.presence_penalty = get_number(object, "presence_penalty", -2, 2).value_or(0.0);
  s.frequency_penalty = get_number(object, "frequency_penalty", -2, 2).value_or(0.0);
  // Extensions, as in vLLM: more ids that end a sequence, and generating past EOS.
  if (const json* ids = find(object, "stop_token_ids")) {
    const std::string must_be =
        str("an array of at most ", kMaxStopTokenIds, " token ids in [0, ", limits.vocab, ")");
    if (!ids->is_array() || ids->size() > kMaxStopTokenIds) bad("stop_token_ids", must_be, *ids);
    for (const json& id : *ids) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
          id.get<std::int64_t>() >= limits.vocab) {
        bad("stop_token_ids", must_be, *ids);
      }
      s.stop_token_ids.push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
  }
  s.ignore_eos = get_bool(object, "ignore_eos").value_or(false);
  return options;
}

}  // namespace kvpr::gateway::fields
