// Chart layout and rendering. The canvas is split into margins (title on top, tick labels and axis
// labels left and below) around a framed plot area; data maps linearly onto it. Axis ranges are
// widened to round 1-2-5 tick values; y starts at 0 when no y is negative. The legend goes into
// the corner of the plot area that hides the least data, and each marker's label beside it where
// it covers no other label, marker or much of a line.
#include "kvpr/plot/plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <utility>

#include "canvas.h"
#include "kvpr/common/error.h"
#include "png.h"

namespace kvpr::plot {

namespace {

using detail::Canvas;
using detail::Rect;
using detail::text_height;
using detail::text_width;

constexpr std::uint32_t kWhite = 0xffffff;
constexpr std::uint32_t kInk = 0x222222;
constexpr std::uint32_t kFrame = 0x444444;
constexpr std::uint32_t kGrid = 0xe6e6e6;
constexpr std::uint32_t kLegendBorder = 0xb0b0b0;
constexpr int kMinSize = 200, kMaxSize = 8192;

bool finite(double x, double y) {
  return std::isfinite(x) && std::isfinite(y);
}

struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;

  // Maps v in [lo, hi] onto [p0, p1] (pixels, either direction).
  double map(double v, double p0, double p1) const { return p0 + (v - lo) / (hi - lo) * (p1 - p0); }
};

// A tick value as text: fixed-point with as many decimals as the step needs, or, with digits > 0,
// compact scientific with that many significant digits ("2.5e6", "1e-5").
std::string format_tick(double v, double step, int digits) {
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0.0"
  char buf[64];
  if (digits == 0) {
    const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
  }
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  std::string text = buf;  // e.g. "2.5e+06": drop the '+' and the exponent's leading zeros
  if (const auto e = text.find('e'); e != std::string::npos) {
    std::string exponent = text.substr(e + 1);
    const bool negative = exponent[0] == '-';
    exponent.erase(0, exponent.find_first_not_of("+-0"));
    text = text.substr(0, e + 1) + (negative ? "-" : "") + exponent;
  }
  return text;
}

// An axis over [lo, hi] (hi > lo) widened to whole steps of the 1-2-5 step that makes the number
// of intervals closest to target (the smaller step on a tie).
Axis make_axis(double lo, double hi, int target) {
  if (!std::isfinite(hi - lo)) fail("plot: data range ", lo, " to ", hi, " is too wide to plot");
  // A span too narrow for doubles to tell ticks apart is widened around its middle.
  const double min_span = std::max(std::abs(lo), std::abs(hi)) * 1e-9;
  if (hi - lo < min_span) {
    const double mid = lo / 2 + hi / 2;
    lo = mid - min_span, hi = mid + min_span;
  }
  const double magnitude = std::pow(10.0, std::floor(std::log10((hi - lo) / std::max(target, 1))));
  double step = magnitude, best = std::numeric_limits<double>::infinity();
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    const double intervals =
        std::ceil(hi / (m * magnitude) - 1e-9) - std::floor(lo / (m * magnitude) + 1e-9);
    if (std::abs(intervals - target) < best) {
      best = std::abs(intervals - target), step = m * magnitude;
    }
  }
  const double first = std::floor(lo / step + 1e-9);
  const int intervals = std::max(1, static_cast<int>(std::ceil(hi / step - 1e-9) - first));
  Axis axis;
  axis.lo = first * step;
  axis.hi = (first + intervals) * step;
  // Scientific from 1e6 up or for steps under 1e-4, with the digits that tell ticks apart.
  const double top = std::max(std::abs(axis.lo), std::abs(axis.hi));
  int digits = 0;  // fixed-point
  if (top >= 1e6 || step < 1e-4) {
    const auto exponent = [](double v) {
      return static_cast<int>(std::floor(std::log10(v) + 1e-9));
    };
    digits = std::max(1, exponent(top) - exponent(step) + 1);
  }
  for (int i = 0; i <= intervals; ++i) {
    const double v = (first + i) * step;
    axis.ticks.push_back(v);
    axis.labels.push_back(format_tick(v, step, digits));
  }
  return axis;
}

int widest(const std::vector<std::string>& labels, int scale) {
  int w = 0;
  for (const auto& label : labels) w = std::max(w, text_width(label, scale));
  return w;
}

// text cut to at most max_width pixels, ".." marking the cut.
std::string fit(const std::string& text, int max_width, int scale) {
  if (text_width(text, scale) <= max_width) return text;
  std::string cut = text;
  while (!cut.empty() && text_width(cut + "..", scale) > max_width) {
    while (!cut.empty() && (static_cast<unsigned char>(cut.back()) & 0xc0) == 0x80) cut.pop_back();
    if (!cut.empty()) cut.pop_back();  // the last character's first byte
  }
  return cut + "..";
}

struct Point {
  double x, y;
};

// Counts the points inside r.
int covered(const std::vector<Point>& points, const Rect& r) {
  int n = 0;
  for (const auto& p : points) n += p.x >= r.x0 && p.x < r.x1 && p.y >= r.y0 && p.y < r.y1;
  return n;
}

void validate(const Chart& chart) {
  if (chart.width < kMinSize || chart.width > kMaxSize || chart.height < kMinSize ||
      chart.height > kMaxSize) {
    fail("plot: chart size ", chart.width, "x", chart.height, " is outside ", kMinSize, "..",
         kMaxSize);
  }
  bool any = false;
  for (const auto& s : chart.series) {
    if (s.x.size() != s.y.size()) {
      fail("plot: series '", s.name, "' has ", s.x.size(), " x values but ", s.y.size(),
           " y values");
    }
    for (std::size_t i = 0; i < s.x.size(); ++i) any = any || finite(s.x[i], s.y[i]);
  }
  for (const auto& m : chart.markers) any = any || finite(m.x, m.y);
  if (!any) fail("plot: chart '", chart.title, "' is empty: no point has a finite x and y");
}

}  // namespace

std::vector<std::uint8_t> render_rgb(const Chart& chart) {
  validate(chart);
  const int W = chart.width, H = chart.height;
  const int s = (W >= 600 && H >= 400) ? 2 : 1;  // text scale
  const int th = text_height(s), pad = 6 * s, tick = 3 * s;

  // Data ranges over every finite point.
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  auto extend = [&](double x, double y) {
    if (!finite(x, y)) return;
    x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
    y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
  };
  for (const auto& series : chart.series) {
    for (std::size_t i = 0; i < series.x.size(); ++i) extend(series.x[i], series.y[i]);
  }
  for (const auto& m : chart.markers) extend(m.x, m.y);
  if (x_hi <= x_lo) {
    const double d = x_lo == 0 ? 1 : std::abs(x_lo) * 0.1;
    x_lo -= d, x_hi += d;
  }
  const bool from_zero = y_lo >= 0;
  if (from_zero) y_lo = 0;
  const double y_pad = y_hi > y_lo ? (y_hi - y_lo) * 0.05 : (y_hi == 0 ? 1 : std::abs(y_hi) * 0.1);
  y_hi += y_pad;
  if (!from_zero) y_lo -= y_pad;

  // Title scale: one step larger when it fits.
  const int title_scale = text_width(chart.title, s + 1) <= W - 2 * pad ? s + 1 : s;
  const std::string title = fit(chart.title, W - 2 * pad, title_scale);
  const int top = chart.title.empty() ? 3 * pad : 3 * pad + text_height(title_scale);
  const int bottom = tick + pad + th + (chart.x_label.empty() ? 0 : pad + th) + 2 * pad;
  const int plot_h = H - top - bottom;
  const Axis ay = make_axis(y_lo, y_hi, std::clamp(plot_h / (5 * th), 3, 8));
  const int left =
      2 * pad + (chart.y_label.empty() ? 0 : th + pad) + widest(ay.labels, s) + pad / 2 + tick;
  const int right = 3 * 6 * s + pad;
  const int plot_w = W - left - right;
  if (plot_w < 40 || plot_h < 40) {
    fail("plot: chart size ", W, "x", H, " leaves no room for the plot");
  }
  // x ticks: as many as fit with their labels apart.
  Axis ax;
  for (int target = std::clamp(plot_w / (8 * 6 * s), 3, 10);; --target) {
    ax = make_axis(x_lo, x_hi, target);
    const double spacing = plot_w / std::max<double>(1, ax.ticks.size() - 1);
    if (widest(ax.labels, s) + 3 * pad <= spacing || target <= 2) break;
  }

  const Rect area{left, top, left + plot_w, top + plot_h};
  auto px = [&](double x) { return ax.map(x, area.x0, area.x1 - 1); };
  auto py = [&](double y) { return ay.map(y, area.y1 - 1, area.y0); };

  Canvas canvas(W, H, kWhite);

  // Grid.
  for (const double t : ay.ticks) {
    const int y = static_cast<int>(std::lround(py(t)));
    canvas.fill({area.x0, y, area.x1, y + 1}, kGrid);
  }
  for (const double t : ax.ticks) {
    const int x = static_cast<int>(std::lround(px(t)));
    canvas.fill({x, area.y0, x + 1, area.y1}, kGrid);
  }

  // Series lines, then their point squares; `occupied` samples every drawn line for placement.
  std::vector<Point> occupied;
  for (const auto& series : chart.series) {
    detail::Dash dash{5.0 * s, 3.0 * s, 0};
    bool have_prev = false;
    Point prev{};
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      if (!finite(series.x[i], series.y[i])) {
        have_prev = false;
        continue;
      }
      const Point p{px(series.x[i]), py(series.y[i])};
      occupied.push_back(p);
      if (have_prev) {
        canvas.line(prev.x, prev.y, p.x, p.y, series.rgb, 2, series.dashed ? &dash : nullptr);
        const double n = std::ceil(std::hypot(p.x - prev.x, p.y - prev.y) / 4);
        for (double k = 1; k < n; ++k) {
          occupied.push_back({prev.x + (p.x - prev.x) * k / n, prev.y + (p.y - prev.y) * k / n});
        }
      }
      prev = p, have_prev = true;
    }
  }
  for (const auto& series : chart.series) {
    if (!series.markers) continue;
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      if (!finite(series.x[i], series.y[i])) continue;
      const int x = static_cast<int>(std::lround(px(series.x[i])));
      const int y = static_cast<int>(std::lround(py(series.y[i])));
      canvas.fill({x - s - 1, y - s - 1, x + s + 2, y + s + 2}, series.rgb);
    }
  }

  // Frame, ticks and tick labels.
  canvas.outline({area.x0 - 1, area.y0 - 1, area.x1 + 1, area.y1 + 1}, kFrame);
  for (std::size_t i = 0; i < ay.ticks.size(); ++i) {
    const int y = static_cast<int>(std::lround(py(ay.ticks[i])));
    canvas.fill({area.x0 - 1 - tick, y, area.x0 - 1, y + 1}, kFrame);
    const int x = area.x0 - 1 - tick - pad / 2 - text_width(ay.labels[i], s);
    detail::draw_text(canvas, x, y - th / 2, ay.labels[i], kInk, s);
  }
  for (std::size_t i = 0; i < ax.ticks.size(); ++i) {
    const int x = static_cast<int>(std::lround(px(ax.ticks[i])));
    canvas.fill({x, area.y1 + 1, x + 1, area.y1 + 1 + tick}, kFrame);
    const int w = text_width(ax.labels[i], s);
    detail::draw_text(canvas, x - w / 2, area.y1 + 1 + tick + pad / 2, ax.labels[i], kInk, s);
  }

  // Legend, in the corner of the plot area that covers the fewest line samples.
  std::vector<std::pair<const Series*, std::string>> entries;  // series, name as shown
  for (const auto& series : chart.series) {
    if (!series.name.empty()) entries.emplace_back(&series, fit(series.name, plot_w / 2, s));
  }
  Rect legend{};
  if (!entries.empty()) {
    const int sample = 12 * s, row = th + detail::text_depth(s) + s + 2, inset = pad;
    int name_w = 0;
    for (const auto& e : entries) name_w = std::max(name_w, text_width(e.second, s));
    const int lw = 2 * pad + sample + pad + name_w;
    const int lh = 2 * pad + static_cast<int>(entries.size()) * row - (row - th) + s;
    const Rect corners[] = {
        {area.x1 - inset - lw, area.y0 + inset, area.x1 - inset, area.y0 + inset + lh},
        {area.x0 + inset, area.y0 + inset, area.x0 + inset + lw, area.y0 + inset + lh},
        {area.x1 - inset - lw, area.y1 - inset - lh, area.x1 - inset, area.y1 - inset},
        {area.x0 + inset, area.y1 - inset - lh, area.x0 + inset + lw, area.y1 - inset}};
    legend = corners[0];
    for (const auto& r : corners) {
      if (covered(occupied, r) < covered(occupied, legend)) legend = r;
    }
    canvas.fill(legend, kWhite);
    canvas.outline(legend, kLegendBorder);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const Series& e = *entries[i].first;
      const int y = legend.y0 + pad + static_cast<int>(i) * row;
      const double mid = y + th / 2.0, x0 = legend.x0 + pad, x1 = x0 + sample;
      detail::Dash dash{5.0 * s, 3.0 * s, 0};
      canvas.line(x0, mid, x1, mid, e.rgb, 2, e.dashed ? &dash : nullptr);
      if (e.markers) {
        const int cx = static_cast<int>(std::lround((x0 + x1) / 2)), cy = static_cast<int>(mid);
        canvas.fill({cx - s - 1, cy - s - 1, cx + s + 2, cy + s + 2}, e.rgb);
      }
      detail::draw_text(canvas, static_cast<int>(x1) + pad, y, entries[i].second, kInk, s);
    }
  }

  // Markers: a dark-rimmed circle or diamond, then the labels where they collide least.
  const double radius = 3.5 * s + 0.5;
  std::vector<Rect> taken;
  if (!entries.empty()) taken.push_back(legend);
  for (std::size_t i = 0; i < chart.markers.size(); ++i) {
    const auto& m = chart.markers[i];
    if (!finite(m.x, m.y)) continue;
    const double x = px(m.x), y = py(m.y);
    if (i % 2 == 0) {
      canvas.fill_circle(x, y, radius + 1.5, kInk);
      canvas.fill_circle(x, y, radius, m.rgb);
    } else {
      canvas.fill_diamond(x, y, 1.3 * radius + 2, kInk);
      canvas.fill_diamond(x, y, 1.3 * radius, m.rgb);
    }
    const int r = static_cast<int>(std::ceil(1.3 * radius + 2));
    const int cx = static_cast<int>(std::lround(x)), cy = static_cast<int>(std::lround(y));
    taken.push_back({cx - r, cy - r, cx + r + 1, cy + r + 1});
  }
  for (const auto& m : chart.markers) {
    if (!finite(m.x, m.y) || m.label.empty()) continue;
    const int x = static_cast<int>(std::lround(px(m.x))),
              y = static_cast<int>(std::lround(py(m.y)));
    const int w = text_width(m.label, s) + 2 * s, h = th + detail::text_depth(s) + s;
    const int d = static_cast<int>(std::ceil(1.3 * radius + 2)) + s;
    const int xs[] = {x + d, x + d, x - d - w, x - d - w, x - w / 2, x - w / 2, x + d, x - d - w};
    const int ys[] = {y - d - h,     y + d,     y - d - h, y + d,
                      y - d - h - s, y + d + s, y - h / 2, y - h / 2};
    Rect best{};
    long best_cost = std::numeric_limits<long>::max();
    for (std::size_t k = 0; k < std::size(xs); ++k) {
      const Rect c{xs[k], ys[k], xs[k] + w, ys[k] + h};
      long cost = c.inside(area) ? 0 : 1'000'000;
      for (const auto& t : taken) cost += c.overlaps(t) ? 10'000 : 0;
      cost += covered(occupied, c);
      if (cost < best_cost) best = c, best_cost = cost;
    }
    taken.push_back(best);
    canvas.fill(best, kWhite);
    detail::draw_text(canvas, best.x0 + s, best.y0 + s, m.label, m.rgb, s);
  }

  // Title and axis labels.
  if (!title.empty()) {
    const int w = text_width(title, title_scale);
    const int x = std::clamp((area.x0 + area.x1 - w) / 2, pad, W - pad - w);
    detail::draw_text(canvas, x, pad + pad / 2, title, kInk, title_scale);
  }
  if (!chart.x_label.empty()) {
    const std::string label = fit(chart.x_label, W - 2 * pad, s);
    const int w = text_width(label, s);
    const int x = std::clamp((area.x0 + area.x1 - w) / 2, pad, W - pad - w);
    detail::draw_text(canvas, x, area.y1 + 1 + tick + pad / 2 + th + pad, label, kInk, s);
  }
  if (!chart.y_label.empty()) {
    const std::string label = fit(chart.y_label, H - 2 * pad, s);
    const int w = text_width(label, s);
    const int y = std::clamp((area.y0 + area.y1 + w) / 2, pad + w, H - pad);
    detail::draw_text_up(canvas, 2 * pad, y, label, kInk, s);
  }
  return canvas.take();
}

void write_png(const Chart& chart, const std::filesystem::path& path) {
  const auto png = detail::encode_png(chart.width, chart.height, render_rgb(chart));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path.string(), ": cannot open for writing: ", std::strerror(errno));
  out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  out.close();
  if (!out) fail(path.string(), ": cannot write the PNG: ", std::strerror(errno));
}

}  // namespace kvpr::plot
