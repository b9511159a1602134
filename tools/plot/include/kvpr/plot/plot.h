// Line plots of benchmark results, drawn with Cairo and written as PNG: a Chart of line series and
// highlighted points is rendered onto a white image with a framed plot area, 1-2-5 ticks, title,
// axis labels and a legend.
//
// Text is set in the system's sans-serif face (fontconfig); invalid UTF-8 and control characters
// are shown as U+FFFD. Points whose x or y is not finite are skipped and break the series' line
// there. Everything here runs on the caller's thread and keeps no state between calls.
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

// Where data lands on the image: [x_lo, x_hi] maps linearly onto [left, right] and [y_lo, y_hi]
// onto [bottom, top], in image coordinates (pixel (i, j) covers [i, i+1) x [j, j+1), y down).
struct Frame {
  double left = 0, top = 0, right = 0, bottom = 0;
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;  // the axes' ranges, widened to whole ticks

  double px(double x) const { return left + (x - x_lo) / (x_hi - x_lo) * (right - left); }
  double py(double y) const { return bottom + (y - y_lo) / (y_hi - y_lo) * (top - bottom); }
};

// The frame write_png draws the chart in. Throws kvpr::Error when the chart has no finite point,
// a series' x and y differ in length, the size is out of range or leaves no room for the plot.
Frame frame_of(const Chart& chart);

// Renders the chart and writes it to path as an 8-bit RGB PNG. Throws kvpr::Error (one line that
// names the path) when the file cannot be written, and as frame_of does (then nothing is written).
void write_png(const Chart& chart, const std::filesystem::path& path);

}  // namespace kvpr::plot
