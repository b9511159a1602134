// Chart layout and rendering. The image is split into margins (title on top, tick labels and axis
// labels left and below) around a framed plot area; data maps linearly onto it. Axis ranges are
// widened to round 1-2-5 tick values; y starts at 0 when no y is negative. The legend goes into
// the corner of the plot area that hides the least data, and each marker's label beside it where
// it covers no other label, marker or much of a line. Cairo draws (antialiased) and writes the PNG.
#include "kvpr/plot/plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numbers>
#include <utility>

#include "axis.h"
#include "kvpr/common/error.h"
#include "painter.h"

namespace kvpr::plot {
namespace {

using detail::Axis;
using detail::Painter;
using detail::Rect;

constexpr std::uint32_t kWhite = 0xffffff;
constexpr std::uint32_t kInk = 0x222222;
constexpr std::uint32_t kFrame = 0x444444;
constexpr std::uint32_t kGrid = 0xe6e6e6;
constexpr std::uint32_t kLegendBorder = 0xb0b0b0;
constexpr int kMinSize = 200, kMaxSize = 8192;

bool finite(double x, double y) {
  return std::isfinite(x) && std::isfinite(y);
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

// Sizes in pixels, all proportional to the scale s (2 on charts of 600x400 and up, else 1).
struct Style {
  double s, pad, tick, size, line;
  double th, td;  // text ascent and descent at size
};

struct Layout {
  Style style;
  double title_size;
  std::string title;  // cut to fit
  Axis ax, ay;
  Rect area;  // the plot area's pixels
  Frame frame;
};

// text cut to at most max_width pixels, ".." marking the cut.
std::string fit(const Painter& p, const std::string& text, double max_width, double size) {
  if (p.text_width(text, size) <= max_width) return text;
  std::string cut = text;
  while (!cut.empty() && p.text_width(cut + "..", size) > max_width) {
    while (!cut.empty() && (static_cast<unsigned char>(cut.back()) & 0xc0) == 0x80) cut.pop_back();
    if (!cut.empty()) cut.pop_back();  // the last character's first byte
  }
  return cut + "..";
}

double widest(const Painter& p, const std::vector<std::string>& labels, double size) {
  double w = 0;
  for (const auto& label : labels) w = std::max(w, p.text_width(label, size));
  return w;
}

Layout lay_out(const Chart& chart, const Painter& p) {
  const double W = chart.width, H = chart.height;
  Layout L;
  const double s = (W >= 600 && H >= 400) ? 2 : 1;
  L.style = {s, 6 * s, 3 * s, 10 * s, 1.5 + s, 0, 0};
  Style& st = L.style;
  st.th = std::ceil(p.ascent(st.size)), st.td = std::ceil(p.descent(st.size));

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

  // Title: a larger size when it fits.
  L.title_size =
      p.text_width(chart.title, 1.3 * st.size) <= W - 2 * st.pad ? 1.3 * st.size : st.size;
  L.title = fit(p, chart.title, W - 2 * st.pad, L.title_size);
  const double top =
      std::ceil(chart.title.empty() ? 3 * st.pad : 3 * st.pad + p.ascent(L.title_size));
  const double bottom =
      st.tick + st.pad + st.th + (chart.x_label.empty() ? 0 : st.pad + st.th) + 2 * st.pad;
  const double plot_h = std::floor(H - top - bottom);
  L.ay = detail::make_axis(y_lo, y_hi, std::clamp(static_cast<int>(plot_h / (5 * st.th)), 3, 8));
  const double left = std::ceil(2 * st.pad + (chart.y_label.empty() ? 0 : st.th + st.pad) +
                                widest(p, L.ay.labels, st.size) + st.pad / 2 + st.tick);
  const double right = 3 * st.size + st.pad;
  const double plot_w = std::floor(W - left - right);
  if (plot_w < 40 || plot_h < 40)
    fail("plot: chart size ", W, "x", H, " leaves no room for the plot");
  // x ticks: as many as fit with their labels apart.
  for (int target = std::clamp(static_cast<int>(plot_w / (5 * st.size)), 3, 10);; --target) {
    L.ax = detail::make_axis(x_lo, x_hi, target);
    const double spacing = plot_w / std::max<double>(1, L.ax.ticks.size() - 1);
    if (widest(p, L.ax.labels, st.size) + 3 * st.pad <= spacing || target <= 2) break;
  }
  L.area = {left, top, left + plot_w, top + plot_h};
  // Axis ends on the centres of the area's outermost pixels.
  L.frame = {L.area.x0 + 0.5, L.area.y0 + 0.5, L.area.x1 - 0.5, L.area.y1 - 0.5,
             L.ax.lo,         L.ax.hi,         L.ay.lo,         L.ay.hi};
  return L;
}

// Grid, series lines and point squares; returns samples along every drawn line (for placing the
// legend and labels where they hide the least).
std::vector<Point> draw_data(const Painter& p, const Chart& chart, const Layout& L) {
  const Frame& f = L.frame;
  const Style& st = L.style;
  cairo_t* cr = p.cr();
  p.set_colour(kGrid);
  cairo_set_line_width(cr, 1);
  for (const double t : L.ay.ticks) {
    const double y = std::floor(f.py(t)) + 0.5;
    cairo_move_to(cr, L.area.x0, y), cairo_line_to(cr, L.area.x1, y);
  }
  for (const double t : L.ax.ticks) {
    const double x = std::floor(f.px(t)) + 0.5;
    cairo_move_to(cr, x, L.area.y0), cairo_line_to(cr, x, L.area.y1);
  }
  cairo_stroke(cr);

  std::vector<Point> occupied;
  cairo_set_line_width(cr, st.line);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  const double dash[] = {5 * st.s, 3 * st.s};
  for (const auto& series : chart.series) {
    cairo_set_dash(cr, dash, series.dashed ? 2 : 0, 0);
    bool have_prev = false;
    Point prev{};
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      if (!finite(series.x[i], series.y[i])) {
        have_prev = false;
        continue;
      }
      const Point q{f.px(series.x[i]), f.py(series.y[i])};
      occupied.push_back(q);
      if (have_prev) {
        cairo_line_to(cr, q.x, q.y);
        const double n = std::ceil(std::hypot(q.x - prev.x, q.y - prev.y) / 4);
        for (double k = 1; k < n; ++k) {
          occupied.push_back({prev.x + (q.x - prev.x) * k / n, prev.y + (q.y - prev.y) * k / n});
        }
      } else {
        cairo_move_to(cr, q.x, q.y);
      }
      prev = q, have_prev = true;
    }
    p.set_colour(series.rgb);
    cairo_stroke(cr);
  }
  cairo_set_dash(cr, nullptr, 0, 0);
  const double half = st.s + 1;
  for (const auto& series : chart.series) {
    if (!series.markers) continue;
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      if (!finite(series.x[i], series.y[i])) continue;
      const double x = f.px(series.x[i]), y = f.py(series.y[i]);
      p.fill({x - half, y - half, x + half, y + half}, series.rgb);
    }
  }
  return occupied;
}

// Frame, ticks, tick labels, title and axis labels.
void draw_axes(const Painter& p, const Chart& chart, const Layout& L) {
  const Frame& f = L.frame;
  const Style& st = L.style;
  const Rect& a = L.area;
  const double W = chart.width, H = chart.height;
  cairo_t* cr = p.cr();
  p.outline({a.x0 - 1, a.y0 - 1, a.x1 + 1, a.y1 + 1}, kFrame);
  p.set_colour(kFrame);
  for (const double t : L.ay.ticks) {
    const double y = std::floor(f.py(t)) + 0.5;
    cairo_move_to(cr, a.x0 - 1 - st.tick, y), cairo_line_to(cr, a.x0 - 1, y);
  }
  for (const double t : L.ax.ticks) {
    const double x = std::floor(f.px(t)) + 0.5;
    cairo_move_to(cr, x, a.y1 + 1), cairo_line_to(cr, x, a.y1 + 1 + st.tick);
  }
  cairo_stroke(cr);
  for (std::size_t i = 0; i < L.ay.ticks.size(); ++i) {
    const double y = f.py(L.ay.ticks[i]);
    const double x = a.x0 - 1 - st.tick - st.pad / 2 - p.text_width(L.ay.labels[i], st.size);
    p.text(x, y - st.th / 2, L.ay.labels[i], kInk, st.size);
  }
  for (std::size_t i = 0; i < L.ax.ticks.size(); ++i) {
    const double x = f.px(L.ax.ticks[i]) - p.text_width(L.ax.labels[i], st.size) / 2;
    p.text(x, a.y1 + 1 + st.tick + st.pad / 2, L.ax.labels[i], kInk, st.size);
  }
  if (!L.title.empty()) {
    const double w = p.text_width(L.title, L.title_size);
    const double x = std::clamp((a.x0 + a.x1 - w) / 2, st.pad, W - st.pad - w);
    p.text(x, 1.5 * st.pad, L.title, kInk, L.title_size);
  }
  if (!chart.x_label.empty()) {
    const std::string label = fit(p, chart.x_label, W - 2 * st.pad, st.size);
    const double w = p.text_width(label, st.size);
    const double x = std::clamp((a.x0 + a.x1 - w) / 2, st.pad, W - st.pad - w);
    p.text(x, a.y1 + 1 + st.tick + st.pad / 2 + st.th + st.pad, label, kInk, st.size);
  }
  if (!chart.y_label.empty()) {
    const std::string label = fit(p, chart.y_label, H - 2 * st.pad, st.size);
    const double w = p.text_width(label, st.size);
    const double y = std::clamp((a.y0 + a.y1 + w) / 2, st.pad + w, H - st.pad);
    p.text_up(2 * st.pad, y, label, kInk, st.size);
  }
}

// The legend, in the corner of the plot area that covers the fewest line samples; returns its
// box (empty when no series has a name).
Rect draw_legend(const Painter& p, const Chart& chart, const Layout& L,
                 const std::vector<Point>& occupied) {
  const Style& st = L.style;
  const Rect& a = L.area;
  std::vector<std::pair<const Series*, std::string>> entries;  // series, name as shown
  for (const auto& series : chart.series) {
    if (!series.name.empty())
      entries.emplace_back(&series, fit(p, series.name, (a.x1 - a.x0) / 2, st.size));
  }
  if (entries.empty()) return {};
  const double sample = 12 * st.s, row = st.th + st.td + st.s, inset = st.pad;
  double name_w = 0;
  for (const auto& e : entries) name_w = std::max(name_w, p.text_width(e.second, st.size));
  const double lw = std::ceil(2 * st.pad + sample + st.pad + name_w);
  const double lh =
      std::ceil(2 * st.pad + static_cast<double>(entries.size()) * row - (row - st.th));
  const Rect corners[] = {{a.x1 - inset - lw, a.y0 + inset, a.x1 - inset, a.y0 + inset + lh},
                          {a.x0 + inset, a.y0 + inset, a.x0 + inset + lw, a.y0 + inset + lh},
                          {a.x1 - inset - lw, a.y1 - inset - lh, a.x1 - inset, a.y1 - inset},
                          {a.x0 + inset, a.y1 - inset - lh, a.x0 + inset + lw, a.y1 - inset}};
  Rect legend = corners[0];
  for (const auto& r : corners) {
    if (covered(occupied, r) < covered(occupied, legend)) legend = r;
  }
  p.fill(legend, kWhite);
  p.outline(legend, kLegendBorder);
  cairo_t* cr = p.cr();
  const double dash[] = {5 * st.s, 3 * st.s};
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Series& e = *entries[i].first;
    const double y = legend.y0 + st.pad + static_cast<double>(i) * row;
    const double mid = y + st.th / 2, x0 = legend.x0 + st.pad, x1 = x0 + sample;
    p.set_colour(e.rgb);
    cairo_set_line_width(cr, st.line);
    cairo_set_dash(cr, dash, e.dashed ? 2 : 0, 0);
    cairo_move_to(cr, x0, mid), cairo_line_to(cr, x1, mid);
    cairo_stroke(cr);
    cairo_set_dash(cr, nullptr, 0, 0);
    if (e.markers) {
      const double cx = (x0 + x1) / 2, half = st.s + 1;
      p.fill({cx - half, mid - half, cx + half, mid + half}, e.rgb);
    }
    p.text(x1 + st.pad, y, entries[i].second, kInk, st.size);
  }
  return legend;
}

void marker_shape(cairo_t* cr, std::size_t index, double x, double y, double r) {
  if (index % 2 == 0) {
    cairo_arc(cr, x, y, r, 0, 2 * std::numbers::pi);
  } else {
    cairo_move_to(cr, x, y - r), cairo_line_to(cr, x + r, y), cairo_line_to(cr, x, y + r);
    cairo_line_to(cr, x - r, y), cairo_close_path(cr);
  }
}

// Markers: a dark-rimmed circle or diamond, then the labels where they collide least.
void draw_markers(const Painter& p, const Chart& chart, const Layout& L,
                  const std::vector<Point>& occupied, const Rect& legend) {
  const Frame& f = L.frame;
  const Style& st = L.style;
  const double radius = 3.5 * st.s + 0.5, r = 1.3 * radius + 2;
  std::vector<Rect> taken;
  if (legend.x1 > legend.x0) taken.push_back(legend);
  for (std::size_t i = 0; i < chart.markers.size(); ++i) {
    const auto& m = chart.markers[i];
    if (!finite(m.x, m.y)) continue;
    const double x = f.px(m.x), y = f.py(m.y), scale = i % 2 == 0 ? 1 : 1.3;
    p.set_colour(kInk);
    marker_shape(p.cr(), i, x, y, scale * radius + 1.5 * scale);
    cairo_fill(p.cr());
    p.set_colour(m.rgb);
    marker_shape(p.cr(), i, x, y, scale * radius);
    cairo_fill(p.cr());
    taken.push_back({x - r, y - r, x + r, y + r});
  }
  for (const auto& m : chart.markers) {
    if (!finite(m.x, m.y) || m.label.empty()) continue;
    const double x = f.px(m.x), y = f.py(m.y);
    const double w = p.text_width(m.label, st.size) + 2 * st.s, h = st.th + st.td + st.s;
    const double d = r + st.s;
    const double xs[] = {x + d,     x + d,     x - d - w, x - d - w,
                         x - w / 2, x - w / 2, x + d,     x - d - w};
    const double ys[] = {y - d - h,        y + d,        y - d - h, y + d,
                         y - d - h - st.s, y + d + st.s, y - h / 2, y - h / 2};
    Rect best{};
    long best_cost = std::numeric_limits<long>::max();
    for (std::size_t k = 0; k < std::size(xs); ++k) {
      const Rect c{xs[k], ys[k], xs[k] + w, ys[k] + h};
      long cost = c.inside(L.area) ? 0 : 1'000'000;
      for (const auto& t : taken) cost += c.overlaps(t) ? 10'000 : 0;
      cost += covered(occupied, c);
      if (cost < best_cost) best = c, best_cost = cost;
    }
    taken.push_back(best);
    p.fill(best, kWhite);
    p.text(best.x0 + st.s, best.y0 + st.s, m.label, m.rgb, st.size);
  }
}

cairo_status_t append_to_stream(void* closure, const unsigned char* data, unsigned int length) {
  auto* out = static_cast<std::ofstream*>(closure);
  out->write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(length));
  return *out ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

}  // namespace

Frame frame_of(const Chart& chart) {
  validate(chart);
  const Painter painter(chart.width, chart.height);
  return lay_out(chart, painter).frame;
}

void write_png(const Chart& chart, const std::filesystem::path& path) {
  validate(chart);
  const Painter painter(chart.width, chart.height);
  const Layout layout = lay_out(chart, painter);
  const std::vector<Point> occupied = draw_data(painter, chart, layout);
  draw_axes(painter, chart, layout);
  const Rect legend = draw_legend(painter, chart, layout, occupied);
  draw_markers(painter, chart, layout, occupied, legend);
  painter.check();

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path.string(), ": cannot open for writing: ", std::strerror(errno));
  const cairo_status_t status =
      cairo_surface_write_to_png_stream(painter.surface(), append_to_stream, &out);
  out.close();
  if (status != CAIRO_STATUS_SUCCESS || !out) {
    fail(path.string(), ": cannot write the PNG: ",
         status != CAIRO_STATUS_SUCCESS ? cairo_status_to_string(status) : std::strerror(errno));
  }
}

}  // namespace kvpr::plot
