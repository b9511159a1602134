#include "kvpr/common/profile.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kvpr/common/error.h"

namespace kvpr {

double Curve::at(double at_x) const {
  if (x.empty()) fail("profile: interpolation on an empty curve");
  if (at_x <= x.front()) return y.front();
  if (at_x >= x.back()) return y.back();
  const auto hi = static_cast<std::size_t>(std::upper_bound(x.begin(), x.end(), at_x) - x.begin());
  const std::size_t lo = hi - 1;
  const double t = (std::log2(at_x) - std::log2(x[lo])) / (std::log2(x[hi]) - std::log2(x[lo]));
  return y[lo] + t * (y[hi] - y[lo]);
}

namespace {

nlohmann::json curve_json(const Curve& c) {
  return {{"x", c.x}, {"y", c.y}};
}

Curve curve_from(const nlohmann::json& j, const char* name, const std::string& origin) {
  if (!j.contains(name)) fail(origin, ": profile has no curve '", name, "'");
  Curve c;
  c.x = j.at(name).at("x").get<std::vector<double>>();
  c.y = j.at(name).at("y").get<std::vector<double>>();
  if (c.x.empty() || c.x.size() != c.y.size()) {
    fail(origin, ": curve '", name, "' has ", c.x.size(), " x and ", c.y.size(), " y values");
  }
  for (std::size_t i = 0; i < c.x.size(); ++i) {
    if (!(c.x[i] > 0) || !(c.y[i] > 0) || (i > 0 && c.x[i] <= c.x[i - 1])) {
      fail(origin, ": curve '", name, "' sample ", i, " (", c.x[i], ", ", c.y[i],
           ") is not positive and increasing in x");
    }
  }
  return c;
}

}  // namespace

std::string HardwareProfile::to_json() const {
  nlohmann::json j{
      {"fingerprint", fingerprint},
      {"backend", backend},
      {"description", description},
      {"created", created},
      {"shape",
       {{"h", h}, {"h_kv", h_kv}, {"n_heads", n_heads}, {"head_dim", head_dim}, {"ffn", ffn}}},
      {"h2d_bytes_per_s", curve_json(h2d_bytes_per_s)},
      {"d2h_bytes_per_s", curve_json(d2h_bytes_per_s)},
      {"recompute_flops_per_s", curve_json(recompute_flops_per_s)},
      {"attention_s_per_token", attention_s_per_token},
      {"attention_s_per_query", attention_s_per_query},
      {"other_s_per_layer", other_s_per_layer},
      {"other_s_per_row", other_s_per_row},
      {"host_attn_bytes_per_s", host_attn_bytes_per_s},
      {"host_threads", host_threads}};
  return j.dump(1);
}

HardwareProfile HardwareProfile::from_json(const std::string& text, const std::string& origin) {
  HardwareProfile p;
  try {
    const auto j = nlohmann::json::parse(text);
    p.fingerprint = j.at("fingerprint").get<std::string>();
    p.backend = j.at("backend").get<std::string>();
    p.description = j.value("description", "");
    p.created = j.value("created", "");
    const auto& shape = j.at("shape");
    p.h = shape.at("h").get<std::int64_t>();
    p.h_kv = shape.at("h_kv").get<std::int64_t>();
    p.n_heads = shape.at("n_heads").get<std::int64_t>();
    p.head_dim = shape.at("head_dim").get<std::int64_t>();
    p.ffn = shape.value("ffn", std::int64_t{0});
    p.h2d_bytes_per_s = curve_from(j, "h2d_bytes_per_s", origin);
    p.d2h_bytes_per_s = curve_from(j, "d2h_bytes_per_s", origin);
    p.recompute_flops_per_s = curve_from(j, "recompute_flops_per_s", origin);
    p.attention_s_per_token = j.at("attention_s_per_token").get<double>();
    p.attention_s_per_query = j.at("attention_s_per_query").get<double>();
    p.other_s_per_layer = j.at("other_s_per_layer").get<double>();
    p.other_s_per_row = j.at("other_s_per_row").get<double>();
    p.vocab = j.value("vocab", std::int64_t{0});
    p.head_s = j.value("head_s", 0.0);
    p.head_s_per_row = j.value("head_s_per_row", 0.0);
    p.host_attn_bytes_per_s = j.value("host_attn_bytes_per_s", 0.0);
    p.host_threads = j.value("host_threads", std::int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": not a kvpr profile: ", e.what());
  }
  return p;
}

void save_profile(const HardwareProfile& profile, const std::filesystem::path& path) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) fail(path.string(), ": cannot write profile");
    out << profile.to_json() << "\n";
  }
  std::filesystem::rename(tmp, path);
}

HardwareProfile load_profile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) fail(path.string(), ": cannot read profile");
  std::stringstream text;
  text << in.rdbuf();
  return HardwareProfile::from_json(text.str(), path.string());
}

}  // namespace kvpr
