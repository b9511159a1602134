// Tick placement: the step is 1, 2 or 5 times a power of ten; ticks sit on whole steps so every
// label is a round number. Labels carry as many decimals as the step needs and no more.
#include "axis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "kvpr/common/error.h"

namespace kvpr::plot::detail {
namespace {

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

}  // namespace

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

}  // namespace kvpr::plot::detail
