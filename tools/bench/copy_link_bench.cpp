// kvpr-bench-link: measures host→device copies through a backend's copy queue at several sizes and
// compares them with the emulated link the CPU backend was given (--gbps, --latency-us). This is
// where the emulated link's *rate* is checked (unit tests only check ordering), and its JSON is
// what a planner profile or a CI check can read. It also measures the same copies unthrottled,
// because the emulation can only slow copies down: a setting above that ceiling cannot be met.
//
// Usage: kvpr-bench-link [--gbps X] [--latency-us Y] [--bytes N] [--reps R] [--json FILE]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace {

using kvpr::kernels::Backend;
using kvpr::kernels::BackendOptions;
using kvpr::kernels::Queue;

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr int kTrials = 3;

struct Options {
  double gbps = 8;
  double latency_us = 0;
  std::size_t bytes = 0;  // 0 = the sweep 64 KiB .. 64 MiB
  int reps = 0;           // 0 = enough for 1 GiB per size, within [8, 20000]
  std::string json_path;
};

struct Result {
  std::size_t bytes = 0;
  int reps = 0;
  double seconds = 0;
  double bytes_per_s = 0;
  double expected_bytes_per_s = 0;  // what the emulated link allows, latency included
  double unthrottled_bytes_per_s = 0;
};

// Seconds for `reps` back-to-back copies of `bytes`, timed on the host from before the first
// enqueue to the return of host_wait on a marker after the last: an upper bound that includes
// queueing, so a ratio above 1 would mean the emulated link ran faster than it was set to.
double time_copies_once(Backend& backend, std::size_t bytes, int reps) {
  const auto n = static_cast<std::int64_t>(bytes / sizeof(float));
  std::vector<float> host(static_cast<std::size_t>(n), 1.0f);
  auto buffer = backend.alloc(bytes);
  const auto dst = buffer->tensor(kvpr::DType::f32, 1, n);
  backend.copy_to_device(Queue::copy, dst, host.data(), kvpr::DType::f32);  // warm up the pages
  backend.synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    backend.copy_to_device(Queue::copy, dst, host.data(), kvpr::DType::f32);
  }
  backend.host_wait(backend.record(Queue::copy));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The best of kTrials runs: other processes on the machine only ever make a run slower.
double time_copies(Backend& backend, std::size_t bytes, int reps) {
  double best = time_copies_once(backend, bytes, reps);
  for (int trial = 1; trial < kTrials; ++trial) {
    best = std::min(best, time_copies_once(backend, bytes, reps));
  }
  return best;
}

// `out` was opened before measuring, so a bad path fails at once rather than after the run.
void write_json(std::ofstream& out, const std::string& path, const Options& options,
                const std::vector<Result>& results) {
  out << "{\"gbps\": " << options.gbps << ", \"latency_s\": " << options.latency_us * 1e-6
      << ", \"results\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    out << (i == 0 ? "" : ", ") << "{\"bytes\": " << r.bytes << ", \"reps\": " << r.reps
        << ", \"seconds\": " << r.seconds << ", \"bytes_per_s\": " << r.bytes_per_s;
    if (r.expected_bytes_per_s > 0) {  // null when no link is emulated: there is no setting
      out << ", \"expected_bytes_per_s\": " << r.expected_bytes_per_s
          << ", \"ratio\": " << r.bytes_per_s / r.expected_bytes_per_s;
    } else {
      out << R"(, "expected_bytes_per_s": null, "ratio": null)";
    }
    out << ", \"unthrottled_bytes_per_s\": " << r.unthrottled_bytes_per_s << "}";
  }
  out << "]}\n";
  if (!out) kvpr::fail("--json: writing '", path, "' failed");
}

int run(const Options& options) {
  std::ofstream json;
  if (!options.json_path.empty()) {
    json.open(options.json_path);
    if (!json) kvpr::fail("--json: cannot write '", options.json_path, "'");
  }
  std::vector<std::size_t> sizes;
  if (options.bytes > 0) {
    sizes.push_back(options.bytes);
  } else {
    for (std::size_t b = kMiB / 16; b <= 64 * kMiB; b *= 4) sizes.push_back(b);
  }
  BackendOptions throttled;
  throttled.emulate_link_gbps = options.gbps;
  throttled.emulate_link_latency_s = options.latency_us * 1e-6;
  const auto backend = kvpr::kernels::make_backend(throttled);
  const auto free_backend = kvpr::kernels::make_backend(BackendOptions{});
  const bool emulated = options.gbps > 0 || options.latency_us > 0;

  std::printf("copy queue host->device, emulated link %.3g GB/s, latency %.3g us (best of %d)\n",
              options.gbps, options.latency_us, kTrials);
  std::printf("%12s %6s %12s %12s %8s %16s\n", "bytes", "reps", "GB/s", "expected", "ratio",
              "unthrottled GB/s");
  std::vector<Result> results;
  for (const std::size_t bytes : sizes) {
    Result r;
    r.bytes = bytes;
    r.reps = options.reps > 0
                 ? options.reps
                 : static_cast<int>(std::clamp<std::size_t>(1024 * kMiB / bytes, 8, 20000));
    r.seconds = time_copies(*backend, bytes, r.reps);
    r.bytes_per_s = static_cast<double>(bytes) * r.reps / r.seconds;
    r.unthrottled_bytes_per_s =
        emulated ? static_cast<double>(bytes) * r.reps / time_copies(*free_backend, bytes, r.reps)
                 : r.bytes_per_s;
    if (emulated) {
      const double per_copy_s =
          throttled.emulate_link_latency_s +
          (options.gbps > 0 ? static_cast<double>(bytes) / (options.gbps * 1e9) : 0.0);
      r.expected_bytes_per_s = static_cast<double>(bytes) / per_copy_s;
    }
    if (emulated) {
      std::printf("%12zu %6d %12.3f %12.3f %8.3f %16.3f\n", bytes, r.reps, r.bytes_per_s / 1e9,
                  r.expected_bytes_per_s / 1e9, r.bytes_per_s / r.expected_bytes_per_s,
                  r.unthrottled_bytes_per_s / 1e9);
    } else {
      std::printf("%12zu %6d %12.3f %12s %8s %16.3f\n", bytes, r.reps, r.bytes_per_s / 1e9, "-",
                  "-", r.unthrottled_bytes_per_s / 1e9);
    }
    results.push_back(r);
  }
  if (json.is_open()) write_json(json, options.json_path, options, results);
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  Options options;
  CLI::App app(
      "kvpr-bench-link: host->device copies through a backend's copy queue, measured "
      "against the emulated link");
  app.add_option("--gbps", options.gbps,
                 "emulated link rate in GB/s; 0 measures the unthrottled copy queue only")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--latency-us", options.latency_us, "emulated per-copy latency")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--bytes", options.bytes,
                 "one copy size, a multiple of 4 (default: the sweep 64 KiB .. 64 MiB)")
      ->check(CLI::PositiveNumber);
  app.add_option("--reps", options.reps,
                 "copies per size (default: enough for 1 GiB, within [8, 20000])")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", options.json_path, "also write the results to FILE");
  CLI11_PARSE(app, argc, argv);
  try {
    if (options.bytes % 4 != 0) kvpr::fail("--bytes: ", options.bytes, " is not a multiple of 4");
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvpr-bench-link: %s\n", e.what());
    return 1;
  }
}
