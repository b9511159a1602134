// kvpr-plot: draws a chart described in JSON as a PNG, for benchmarks written in Python.
//   kvpr-plot CHART.json OUT.png
// CHART.json: {"title", "x_label", "y_label", "width", "height",
//              "series": [{"name", "x": [...], "y": [...], "rgb": "#1f77b4", "dashed", "markers"}],
//              "markers": [{"x", "y", "label", "rgb"}]}
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "kvpr/common/error.h"
#include "kvpr/plot/plot.h"

namespace {

std::uint32_t rgb(const nlohmann::json& j, std::uint32_t fallback) {
  if (!j.is_string()) return fallback;
  const auto text = j.get<std::string>();
  if (text.size() != 7 || text[0] != '#') kvpr::fail("color '", text, "' is not #rrggbb");
  return static_cast<std::uint32_t>(std::stoul(text.substr(1), nullptr, 16));
}

kvpr::plot::Chart chart_of(const nlohmann::json& j) {
  kvpr::plot::Chart c;
  c.title = j.value("title", "");
  c.x_label = j.value("x_label", "");
  c.y_label = j.value("y_label", "");
  c.width = j.value("width", c.width);
  c.height = j.value("height", c.height);
  for (const auto& s : j.value("series", nlohmann::json::array())) {
    kvpr::plot::Series series;
    series.name = s.value("name", "");
    series.x = s.at("x").get<std::vector<double>>();
    series.y = s.at("y").get<std::vector<double>>();
    series.rgb = rgb(s.value("rgb", nlohmann::json()), series.rgb);
    series.dashed = s.value("dashed", false);
    series.markers = s.value("markers", true);
    c.series.push_back(std::move(series));
  }
  for (const auto& m : j.value("markers", nlohmann::json::array())) {
    kvpr::plot::Marker marker;
    marker.x = m.at("x").get<double>();
    marker.y = m.at("y").get<double>();
    marker.label = m.value("label", "");
    marker.rgb = rgb(m.value("rgb", nlohmann::json()), marker.rgb);
    c.markers.push_back(std::move(marker));
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: kvpr-plot CHART.json OUT.png\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    if (!in) kvpr::fail("cannot read '", argv[1], "'");
    kvpr::plot::write_png(chart_of(nlohmann::json::parse(in)), argv[2]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvpr-plot: %s\n", e.what());
    return 1;
  }
}
