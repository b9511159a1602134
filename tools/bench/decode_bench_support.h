// Pieces of kvpr-bench-decode that are not the benchmark loop: making the host KV store's memory
// reachable by the device's copy engine, and measuring the two rates of DESIGN.md §1 — B, the
// host→device bandwidth for copies of one store span, and F, the rate of the recompute GEMM
// [m, h] × [h, 2·h_kv] — through the Backend interface, so the same code runs on the CPU and
// CUDA backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvpr/kernels/backend.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/planner/cost_model.h"

namespace kvpr::bench {

// Host memory registered with a backend (Backend::register_host), unregistered on destruction.
class StoreRegistration {
 public:
  // Registers every block the store can hand out: opens one sequence, reserves the whole
  // capacity, merges the blocks' address ranges into page-aligned runs, registers each run, and
  // frees the sequence. `registered()` says whether the backend took all of them (false: copies
  // go through its staging buffers). `tokens` is the capacity in tokens of one sequence.
  StoreRegistration(kernels::Backend& backend, kvstore::LocalKvStore& store, std::int64_t tokens);
  ~StoreRegistration();
  StoreRegistration(const StoreRegistration&) = delete;
  StoreRegistration& operator=(const StoreRegistration&) = delete;

  bool registered() const { return registered_; }
  std::size_t bytes() const;
  // The first registered run: host memory to measure copies from.
  std::byte* first() const { return runs_.empty() ? nullptr : runs_.front().data; }
  std::size_t first_bytes() const { return runs_.empty() ? 0 : runs_.front().bytes; }

 private:
  struct Run {
    std::byte* data;
    std::size_t bytes;
  };
  kernels::Backend& backend_;
  std::vector<Run> runs_;  // registered
  bool registered_ = true;
};

struct MeasuredRates {
  double h2d_bytes_per_s = 0;  // B for copies of `span_bytes` (host bytes)
  std::size_t span_bytes = 0;
  double gemm_flops_per_s = 0;  // F for m rows
  std::int64_t gemm_m = 0;
  planner::Rates rates() const { return {h2d_bytes_per_s, gemm_flops_per_s}; }
};

// B: back-to-back copies of `span_bytes` from `host` (store dtype `dtype`) into a device buffer on
// the copy queue, timed by events; at least `total_bytes` in all.
double measure_h2d(kernels::Backend& backend, const std::byte* host, std::size_t host_bytes,
                   DType dtype, std::size_t span_bytes, std::size_t total_bytes);
// F: x[m, h] · w[2·h_kv, h]ᵀ on the compute queue, timed by events, best of a few runs.
double measure_gemm(kernels::Backend& backend, std::int64_t m, std::int64_t h, std::int64_t h_kv);

}  // namespace kvpr::bench
