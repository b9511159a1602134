// Progress lines for long work (loading, generating) on stderr: at most a few per second, and none
// when stderr is not a terminal unless forced, so logs and tests stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvpr {

class Progress {
 public:
  // total = 0 means unknown.
  Progress(std::string what, std::uint64_t total, bool enabled);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(std::uint64_t done);
  void finish();

 private:
  std::string what_;
  std::uint64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace kvpr
