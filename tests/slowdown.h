// How much longer than in a plain build a test lets an answer take. ThreadSanitizer instruments
// every memory access (5-15x slower, more for large copies) and its build spawns instrumented
// daemons too, so the time a test waits for a reply, and a bound it asserts on a wait, are scaled
// together under it: what the test checks (an answer comes, a dead peer is noticed within its
// timeout) stays the same, only the clock is slower.
#pragma once

#include <chrono>

namespace kvpr::test_timing {

#if defined(__SANITIZE_THREAD__)
inline constexpr int kSlowdown = 5;
#else
inline constexpr int kSlowdown = 1;
#endif

template <class Rep, class Period>
constexpr auto slow(std::chrono::duration<Rep, Period> d) {
  return d * kSlowdown;
}

}  // namespace kvpr::test_timing
