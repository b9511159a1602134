// Decode steps as a Chrome trace (the JSON format Perfetto and chrome://tracing open): one track
// per backend queue (compute, copy) with a span per schedule op — projections, recompute chunks,
// attention, the rest of each layer, the LM head; activation chunks and K,V fetched per layer,
// write-backs — plus a track of whole steps. Spans come from backend events (EngineOptions::trace).
//
// Threads: add_step may be called from any thread (one mutex). The file is written whole by
// write() and by the destructor, so it is valid JSON whenever it exists.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "kvpr/worker/engine.h"

namespace kvpr::worker {

class TraceWriter {
 public:
  // Fails naming the path when it cannot be written.
  explicit TraceWriter(std::filesystem::path path);
  ~TraceWriter();  // writes; never throws
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // The spans of one decode step (step.trace) and the step itself, labelled `label`.
  void add_step(const StepStats& step, const std::string& label);
  void write();
  const std::filesystem::path& path() const { return path_; }

 private:
  struct Event {
    std::string name;
    int tid = 0;
    double ts_us = 0;
    double dur_us = 0;
    std::int32_t layer = -1;
    std::int32_t chunk = -1;
    std::int64_t step = 0;
  };

  std::filesystem::path path_;
  std::mutex mutex_;
  bool have_origin_ = false;
  std::chrono::steady_clock::time_point origin_;
  std::int64_t steps_ = 0;
  std::vector<Event> events_;
};

}  // namespace kvpr::worker
