#include "kvpr/worker/trace.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvpr/common/error.h"

namespace kvpr::worker {
namespace {

constexpr int kStepTrack = 0;
constexpr int kComputeTrack = 1;
constexpr int kCopyTrack = 2;
// A trace past this many spans stops growing (a long serving run would otherwise hold them all).
constexpr std::size_t kMaxEvents = 2'000'000;

}  // namespace

TraceWriter::TraceWriter(std::filesystem::path path) : path_(std::move(path)) {
  std::ofstream probe(path_);
  if (!probe) fail(path_.string(), ": cannot write the trace");
}

TraceWriter::~TraceWriter() {
  try {
    write();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trace %s: %s\n", path_.c_str(), e.what());
  }
}

void TraceWriter::add_step(const StepStats& step, const std::string& label) {
  std::lock_guard lock(mutex_);
  if (!have_origin_) {
    origin_ = step.started;
    have_origin_ = true;
  }
  if (events_.size() + step.trace.size() + 1 > kMaxEvents) return;
  const double t0 = std::chrono::duration<double, std::micro>(step.started - origin_).count();
  const std::int64_t index = steps_++;
  events_.push_back({label, kStepTrack, t0, 1e6 * step.times.total, -1, -1, index});
  for (const TraceSpan& s : step.trace) {
    const int tid = s.queue == kernels::Queue::copy ? kCopyTrack : kComputeTrack;
    events_.push_back(
        {s.op, tid, t0 + 1e6 * s.begin_s, 1e6 * (s.end_s - s.begin_s), s.layer, s.chunk, index});
  }
}

void TraceWriter::write() {
  std::lock_guard lock(mutex_);
  nlohmann::json events = nlohmann::json::array();
  const std::pair<int, const char*> tracks[] = {
      {kStepTrack, "decode steps"}, {kComputeTrack, "compute queue"}, {kCopyTrack, "copy queue"}};
  for (const auto& [tid, name] : tracks) {
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", 1},
                      {"tid", tid},
                      {"args", {{"name", name}}}});
  }
  for (const Event& e : events_) {
    nlohmann::json args = {{"step", e.step}};
    if (e.layer >= 0) args["layer"] = e.layer;
    if (e.chunk >= 0) args["chunk"] = e.chunk;
    events.push_back({{"name", e.name},
                      {"cat", e.tid == kCopyTrack ? "copy" : "compute"},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", e.tid},
                      {"ts", e.ts_us},
                      {"dur", std::max(e.dur_us, 0.0)},
                      {"args", std::move(args)}});
  }
  const std::filesystem::path tmp = path_.string() + ".tmp";
  {
    std::ofstream f(tmp);
    if (!f) fail(tmp.string(), ": cannot write the trace");
    f << nlohmann::json{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}}.dump()
      << "\n";
    if (!f) fail(tmp.string(), ": write failed");
  }
  std::filesystem::rename(tmp, path_);
}

}  // namespace kvpr::worker
