// Private to kvpr_common: how a JSON value appears inside a one-line error message. nlohmann stays
// out of the public headers, so this lives beside the sources that parse JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kvpr::detail {

// One level deep and about 80 characters, so that neither a huge nor a deeply nested value
// (dump() recurses) can blow up the message or the stack.
std::string shown(const nlohmann::json& value);

}  // namespace kvpr::detail
