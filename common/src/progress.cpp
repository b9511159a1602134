#include "kvpr/common/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvpr {

Progress::Progress(std::string what, std::uint64_t total, bool enabled)
    : what_(std::move(what)),
      total_(total),
      enabled_(enabled && isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() {
  finish();
}

void Progress::update(std::uint64_t done) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(250) && done != total_) return;
  last_ = now;
  if (total_ > 0) {
    std::fprintf(stderr, "\r%s: %5.1f%%", what_.c_str(),
                 100.0 * static_cast<double>(done) / static_cast<double>(total_));
  } else {
    std::fprintf(stderr, "\r%s: %llu", what_.c_str(), static_cast<unsigned long long>(done));
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "\r%s: done in %.2f s\n", what_.c_str(), s);
}

}  // namespace kvpr
