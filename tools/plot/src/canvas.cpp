#include "canvas.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace kvpr::plot::detail {

Canvas::Canvas(int width, int height, std::uint32_t background)
    : width_(width), height_(height), rgb_(static_cast<std::size_t>(width) * height * 3) {
  fill({0, 0, width, height}, background);
}

void Canvas::set(int x, int y, std::uint32_t rgb) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  auto* p = rgb_.data() + (static_cast<std::size_t>(y) * width_ + x) * 3;
  p[0] = static_cast<std::uint8_t>(rgb >> 16);
  p[1] = static_cast<std::uint8_t>(rgb >> 8);
  p[2] = static_cast<std::uint8_t>(rgb);
}

void Canvas::fill(const Rect& r, std::uint32_t rgb) {
  for (int y = std::max(r.y0, 0); y < std::min(r.y1, height_); ++y) {
    for (int x = std::max(r.x0, 0); x < std::min(r.x1, width_); ++x) set(x, y, rgb);
  }
}

void Canvas::outline(const Rect& r, std::uint32_t rgb) {
  fill({r.x0, r.y0, r.x1, r.y0 + 1}, rgb);
  fill({r.x0, r.y1 - 1, r.x1, r.y1}, rgb);
  fill({r.x0, r.y0, r.x0 + 1, r.y1}, rgb);
  fill({r.x1 - 1, r.y0, r.x1, r.y1}, rgb);
}

void Canvas::line(double x0, double y0, double x1, double y1, std::uint32_t rgb, int thickness,
                  Dash* dash) {
  // Steps of at most one pixel along the major axis; at each step a thickness x thickness square
  // is stamped, centred on the line.
  const double dx = x1 - x0, dy = y1 - y0;
  const int steps = std::max(1, static_cast<int>(std::ceil(std::max(std::abs(dx), std::abs(dy)))));
  const double step_length = std::hypot(dx, dy) / steps;
  const int lo = -(thickness - 1) / 2, hi = thickness / 2;
  for (int i = 0; i <= steps; ++i) {
    if (dash) {
      const bool on = std::fmod(dash->travelled, dash->on + dash->off) < dash->on;
      if (i < steps) dash->travelled += step_length;
      if (!on) continue;
    }
    const int px = static_cast<int>(std::lround(x0 + dx * i / steps));
    const int py = static_cast<int>(std::lround(y0 + dy * i / steps));
    for (int oy = lo; oy <= hi; ++oy) {
      for (int ox = lo; ox <= hi; ++ox) set(px + ox, py + oy, rgb);
    }
  }
}

void Canvas::fill_circle(double cx, double cy, double radius, std::uint32_t rgb) {
  const int x_lo = static_cast<int>(std::floor(cx - radius));
  const int y_lo = static_cast<int>(std::floor(cy - radius));
  const int x_hi = static_cast<int>(std::ceil(cx + radius));
  const int y_hi = static_cast<int>(std::ceil(cy + radius));
  for (int y = y_lo; y <= y_hi; ++y) {
    for (int x = x_lo; x <= x_hi; ++x) {
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= radius * radius) set(x, y, rgb);
    }
  }
}

void Canvas::fill_diamond(double cx, double cy, double radius, std::uint32_t rgb) {
  const int x_lo = static_cast<int>(std::floor(cx - radius));
  const int y_lo = static_cast<int>(std::floor(cy - radius));
  const int x_hi = static_cast<int>(std::ceil(cx + radius));
  const int y_hi = static_cast<int>(std::ceil(cy + radius));
  for (int y = y_lo; y <= y_hi; ++y) {
    for (int x = x_lo; x <= x_hi; ++x) {
      if (std::abs(x - cx) + std::abs(y - cy) <= radius) set(x, y, rgb);
    }
  }
}

}  // namespace kvpr::plot::detail
