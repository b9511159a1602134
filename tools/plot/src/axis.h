// Axis ranges and tick labels for charts: ranges widened to round 1-2-5 steps, labels written
// fixed-point or, for very large or very small steps, in compact scientific notation.
#pragma once

#include <string>
#include <vector>

namespace kvpr::plot::detail {

struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;  // one per tick
};

// An axis over [lo, hi] (hi >= lo) widened to whole steps of the 1-2-5 step that makes the number
// of intervals closest to target (the smaller step on a tie). Throws kvpr::Error when hi - lo is
// not finite.
Axis make_axis(double lo, double hi, int target);

}  // namespace kvpr::plot::detail
