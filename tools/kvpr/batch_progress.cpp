#include "batch_progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "kvpr/common/error.h"

namespace kvpr::cli {
namespace {

std::atomic<int> g_signals{0};  // SIGINT/SIGTERM received while a batch runs

extern "C" void on_batch_signal(int /*signal*/) {
  g_signals.fetch_add(1);
}

}  // namespace

int batch_signals() {
  return g_signals.load();
}

SignalCounter::SignalCounter() {
  g_signals.store(0);
  struct sigaction action {};
  action.sa_handler = on_batch_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &old_int_);
  sigaction(SIGTERM, &action, &old_term_);
}

SignalCounter::~SignalCounter() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

ProgressLine::ProgressLine(const Counters& counters, std::int64_t total, bool enabled)
    : counters_(counters), total_(total), start_(Clock::now()) {
  if (enabled && isatty(STDERR_FILENO) == 1) thread_ = std::thread([this] { loop(); });
}

void ProgressLine::finish() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  draw();
  std::fprintf(stderr, "\n");
}

void ProgressLine::loop() {
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stop_; })) draw();
}

void ProgressLine::draw() const {
  const double s = std::chrono::duration<double>(Clock::now() - start_).count();
  const auto done = counters_.done.load();
  const double rate = s > 0 ? static_cast<double>(counters_.tokens.load()) / s : 0;
  std::string eta = "--";
  if (done > 0) {
    const double left = s / static_cast<double>(done) * static_cast<double>(total_ - done);
    eta = str(std::llround(left), " s");
  }
  std::fprintf(stderr, "\rbatch: %lld/%lld prompts, %.1f tokens/s, ETA %s   ",
               static_cast<long long>(done), static_cast<long long>(total_), rate, eta.c_str());
  std::fflush(stderr);
}

}  // namespace kvpr::cli
