// The raster that charts are drawn on, with the few primitives plot.cpp needs. Drawing outside
// the image is clipped; coordinates are pixels from the top-left, colours 0xRRGGBB.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace kvpr::plot::detail {

struct Rect {  // [x0, x1) x [y0, y1)
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool overlaps(const Rect& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
  bool inside(const Rect& o) const { return x0 >= o.x0 && y0 >= o.y0 && x1 <= o.x1 && y1 <= o.y1; }
};

// A dash pattern carried along a polyline, so that dashes continue across its segments.
struct Dash {
  double on = 10, off = 6;
  double travelled = 0;
};

class Canvas {
 public:
  Canvas(int width, int height, std::uint32_t background);

  int width() const { return width_; }
  int height() const { return height_; }
  std::vector<std::uint8_t> take() { return std::move(rgb_); }

  void set(int x, int y, std::uint32_t rgb);
  void fill(const Rect& r, std::uint32_t rgb);
  void outline(const Rect& r, std::uint32_t rgb);  // one pixel inside r's edge

  // A line of the given thickness between two points; dashed when dash is non-null.
  void line(double x0, double y0, double x1, double y1, std::uint32_t rgb, int thickness,
            Dash* dash = nullptr);
  void fill_circle(double cx, double cy, double radius, std::uint32_t rgb);
  void fill_diamond(double cx, double cy, double radius, std::uint32_t rgb);

 private:
  int width_, height_;
  std::vector<std::uint8_t> rgb_;
};

// Text in the built-in 5x7 font, each font pixel drawn as scale x scale. Characters advance by
// 6*scale; a UTF-8 sequence counts as one character (drawn as a box, like any non-ASCII one).
// text_height is the height of capitals and digits; descenders reach text_depth below it.
int text_width(std::string_view text, int scale);
inline int text_height(int scale) {
  return 7 * scale;
}
inline int text_depth(int scale) {
  return 2 * scale;
}
// Horizontal text with its top-left corner at (x, y).
void draw_text(Canvas& canvas, int x, int y, std::string_view text, std::uint32_t rgb, int scale);
// Text turned 90 degrees counter-clockwise (read bottom to top), its bottom-left corner at (x, y).
void draw_text_up(Canvas& canvas, int x, int y, std::string_view text, std::uint32_t rgb,
                  int scale);

}  // namespace kvpr::plot::detail
