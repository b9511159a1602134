// `kvpr batch`'s terminal side: the SIGINT/SIGTERM count that stops a run (first: finish what is
// in flight; second: cancel it) and the progress line redrawn while it runs.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <thread>

namespace kvpr::cli {

// SIGINT and SIGTERM received since the live SignalCounter was made (0 without one).
int batch_signals();

// Counts SIGINT and SIGTERM from construction (the count starts at 0) for the lifetime of the run;
// the previous handlers come back after.
class SignalCounter {
 public:
  SignalCounter();
  ~SignalCounter();
  SignalCounter(const SignalCounter&) = delete;
  SignalCounter& operator=(const SignalCounter&) = delete;

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

struct Counters {
  std::atomic<std::int64_t> done{0};    // prompts written
  std::atomic<std::int64_t> tokens{0};  // tokens generated (written or not)
  std::atomic<std::int64_t> failed{0};  // prompts the worker refused
};

// One line on a terminal's stderr, redrawn four times a second by its own thread: prompts done,
// tokens/s and the time left at the rate so far. Nothing when disabled or stderr is no terminal.
class ProgressLine {
 public:
  ProgressLine(const Counters& counters, std::int64_t total, bool enabled);
  ~ProgressLine() { finish(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Stops redrawing and ends the line (once).
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  void loop();
  void draw() const;

  const Counters& counters_;
  std::int64_t total_;
  Clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kvpr::cli
