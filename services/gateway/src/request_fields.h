// Readers of one JSON field each, shared by the completions and chat parsers. Each either returns
// the field's value (std::nullopt when absent or null) or throws ApiError 400 whose message names
// the field, what it must be and the value it got, and whose param is the field.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/gateway/request.h"

namespace kvpr::gateway::fields {

using nlohmann::json;

// The value as the client sent it, shortened to a readable length for a message.
std::string shown(const json& value);

[[noreturn]] void bad(std::string_view field, std::string_view must_be, const json& value);

// The top-level object of a body; 400 for invalid JSON (or UTF-8) or a non-object.
json parse_object(std::string_view body);

// The field's value, or nullptr when it is absent or null.
const json* find(const json& object, std::string_view field);

std::optional<bool> get_bool(const json& object, std::string_view field);
// An integer in [lo, hi]; an integral floating-point value (1e3) counts as an integer.
std::optional<std::int64_t> get_int(const json& object, std::string_view field, std::int64_t lo,
                                    std::int64_t hi);
// A finite number in [lo, hi]; with open_lo, lo itself is out of range.
std::optional<double> get_number(const json& object, std::string_view field, double lo, double hi,
                                 bool open_lo = false);
std::optional<std::string> get_string(const json& object, std::string_view field);

// The fields both APIs share (model, n, stream, stream_options, stop, sampling); max_tokens and
// logprobs differ between them and are read by each parser.
GenerationOptions get_generation_options(const json& object, const ModelLimits& limits);

}  // namespace kvpr::gateway::fields
