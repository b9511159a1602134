// The Cairo image a chart is drawn on, with the few primitives plot.cpp needs. Coordinates are
// image pixels from the top-left (y down); colours 0xRRGGBB, opaque.
//
// Ownership: a Painter owns its surface and context (move-only, freed in reverse order of
// creation). Cairo records the first error in the context and turns later calls into no-ops;
// check() turns that error into a kvpr::Error.
#pragma once

#include <cairo.h>

#include <cstdint>
#include <memory>
#include <string>

namespace kvpr::plot::detail {

struct Rect {  // [x0, x1) x [y0, y1)
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool overlaps(const Rect& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
  bool inside(const Rect& o) const { return x0 >= o.x0 && y0 >= o.y0 && x1 <= o.x1 && y1 <= o.y1; }
};

// text with every invalid UTF-8 sequence and control character replaced by U+FFFD (Cairo
// rejects invalid UTF-8 and has no glyph for controls).
std::string printable(const std::string& text);

class Painter {
 public:
  // A white width x height RGB image. Throws kvpr::Error when Cairo cannot create it.
  Painter(int width, int height);

  cairo_t* cr() const { return cr_.get(); }
  cairo_surface_t* surface() const { return surface_.get(); }

  void set_colour(std::uint32_t rgb) const;
  void fill(const Rect& r, std::uint32_t rgb) const;
  void outline(const Rect& r, std::uint32_t rgb) const;  // one pixel wide, inside r's edge

  // Text metrics and drawing in the sans-serif face at size pixels (the em); text is passed
  // through printable(). ascent is the height above the baseline, descent below it.
  double text_width(const std::string& text, double size) const;
  double ascent(double size) const;
  double descent(double size) const;
  // Horizontal text whose top-left corner (the top at the font's ascent) is at (x, top).
  void text(double x, double top, const std::string& text, std::uint32_t rgb, double size) const;
  // Text turned 90 degrees counter-clockwise (read bottom to top), its bottom-left corner at (x,
  // bottom).
  void text_up(double x, double bottom, const std::string& text, std::uint32_t rgb,
               double size) const;

  // Throws kvpr::Error naming Cairo's first error, if any.
  void check() const;

 private:
  struct SurfaceFree {
    void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
  };
  struct ContextFree {
    void operator()(cairo_t* c) const { cairo_destroy(c); }
  };
  std::unique_ptr<cairo_surface_t, SurfaceFree> surface_;
  std::unique_ptr<cairo_t, ContextFree> cr_;  // after surface_: destroyed first
};

}  // namespace kvpr::plot::detail
