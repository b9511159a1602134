// Attention over the oldest tokens [m, s) of each sequence, on the host, straight from the KV
// store's blocks: the third part of the three-way split (DESIGN.md; recompute [0, l), transfer
// [l, m), host [m, s)). The device attends over [0, m) and the new token, then merges these
// partials into its output by the log-sum-exp rule (Backend::attention_merge), as split-K flash
// decoding merges its splits.
//
// Per (sequence, range of KV heads) one work unit streams the K and V rows of its heads once, in
// the store's dtype converted to fp32 row by row, and keeps for each query head a running max, a
// running sum of exponentials and a weighted sum of V (online softmax, fp32; rescaled once per
// block of tokens). Grouped-query heads thus share their K,V reads. A job has as few ranges per
// sequence as keep the threads busy (one — whole rows — when there are as many sequences as
// threads): contiguous reads stream from memory, head slices of rows do not.
//
// Threading: a HostAttention owns `threads` worker threads (the `--host-threads` budget), started
// in the constructor and joined in the destructor. One caller thread (the engine's) calls start()
// and then wait(), one job at a time. Workers call the job's `ready` before reading the query rows
// (the engine waits there for their download). The spans and the query and partial buffers must
// stay valid until wait() has returned; a worker's error is rethrown by wait().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "kvpr/common/dtype.h"
#include "kvpr/kernels/backend.h"
#include "kvpr/kvstore/kv_store_client.h"

namespace kvpr::worker {

// One sequence's host part: its query row and the store's blocks of K and V rows [m, s).
struct HostAttnSeq {
  const float* q = nullptr;             // [n_heads·head_dim], fp32
  std::vector<kvstore::HostSpan> k, v;  // rows of width n_kv_heads·head_dim, in the store dtype
  float* partial = nullptr;             // [n_heads·(head_dim + 2)]: per head max, sum, output
};

// The partials of the query heads of KV heads [kv_begin, kv_end) over the given rows: for each
// such query head h, partial[h·(d + 2)] = max score, [+1] = Σ exp(score − max), [+2 ..] = the
// normalised weighted sum of V. No rows: max −inf, sum 0, output 0. Each row's slice of the range
// is read once, contiguously; every head's result is the same whatever range it is computed in.
void host_attention_partial(const HostAttnSeq& seq, DType dtype, const kernels::AttnShape& shape,
                            std::int64_t kv_begin, std::int64_t kv_end);

class HostAttention {
 public:
  explicit HostAttention(int threads);
  ~HostAttention();
  HostAttention(const HostAttention&) = delete;
  HostAttention& operator=(const HostAttention&) = delete;

  // Starts the partials of every sequence (Fails if a job is still running.)
  void start(std::function<void()> ready, std::vector<HostAttnSeq> seqs, DType dtype,
             const kernels::AttnShape& shape);
  // Blocks until the job has finished; rethrows the first worker error.
  void wait();
  int threads() const { return static_cast<int>(workers_.size()); }
  // Seconds the last finished job ran, from the first worker past `ready` to the last unit.
  double last_job_s() const { return last_job_s_; }

 private:
  void work();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  // The job (guarded by mutex_): units are (sequence, KV-head range) pairs, taken in order.
  std::uint64_t job_ = 0;
  std::function<void()> ready_;
  std::vector<HostAttnSeq> seqs_;
  DType dtype_ = DType::f32;
  kernels::AttnShape shape_;
  std::int64_t head_groups_ = 1;  // KV-head ranges per sequence
  std::int64_t next_unit_ = 0;
  std::int64_t n_units_ = 0;
  std::int64_t units_left_ = 0;
  std::exception_ptr error_;
  bool began_ = false;
  std::chrono::steady_clock::time_point began_at_;
  double last_job_s_ = 0;
  bool stop_ = false;
};

}  // namespace kvpr::worker
