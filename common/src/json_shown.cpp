#include "json_shown.h"

namespace kvpr::detail {

std::string shown(const nlohmann::json& value) {
  using nlohmann::json;
  const auto leaf = [](const json& v) -> std::string {
    if (v.is_array()) return v.empty() ? "[]" : "[...]";
    if (v.is_object()) return v.empty() ? "{}" : "{...}";
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  std::string out;
  if (!value.is_structured()) {
    out = leaf(value);
  } else {
    out = value.is_array() ? "[" : "{";
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (out.size() > 80) {
        out.append(",...");
        break;
      }
      if (it != value.begin()) out += ",";
      if (value.is_object()) out += leaf(it.key()) + ":";
      out += leaf(*it);
    }
    out += value.is_array() ? "]" : "}";
  }
  if (out.size() > 100) {
    out.resize(97);
    out.append("...");
  }
  return out;
}

}  // namespace kvpr::detail
