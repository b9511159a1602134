// A dependency-free line-plot writer for benchmark results: a Chart of line series and highlighted
// points is rendered into an RGB raster (white background, framed axes with 1-2-5 ticks, title,
// axis labels, legend) and written as a PNG encoded by hand (stored deflate blocks, no zlib).
//
// Text uses a built-in 5x7 bitmap font (plus descenders) covering printable ASCII; any other
// character is drawn as a box. Points whose x or y is not finite are skipped and break the
// series' line there.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvpr::plot {

// One line series; x and y must have the same length. rgb is 0xRRGGBB.
struct Series {
  std::string name;  // legend entry; an empty name has none
  std::vector<double> x, y;
  std::uint32_t rgb = 0x1f77b4;
  bool markers = true;  // a small square at every data point
  bool dashed = false;
};

// A highlighted point (e.g. "chosen", "best"): a large circle (even index) or diamond (odd index)
// with its label beside it.
struct Marker {
  double x = 0, y = 0;
  std::string label;
  std::uint32_t rgb = 0xd62728;
};

struct Chart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  std::vector<Marker> markers;
  int width = 900, height = 560;  // pixels, each in [200, 8192]
};

// Renders the chart as width*height*3 bytes, row-major from the top-left, R G B per pixel.
// Throws kvpr::Error when the chart has no finite point, a series' x and y differ in length or the
// size is out of range.
std::vector<std::uint8_t> render_rgb(const Chart& chart);

// Renders the chart and writes it to path as an 8-bit RGB PNG. Throws kvpr::Error (one line that
// names the path) when the file cannot be written, and as render_rgb does.
void write_png(const Chart& chart, const std::filesystem::path& path);

}  // namespace kvpr::plot
