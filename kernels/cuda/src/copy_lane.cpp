// See copy_lane.h.
#include "copy_lane.h"

#include <algorithm>
#include <cstring>

#include "convert.cuh"
#include "cuda_check.h"

namespace kvpr::kernels::cuda {
namespace {

constexpr std::size_t kStagingBytes = std::size_t{4} << 20;

}  // namespace

CopyLane::CopyLane(cudaStream_t stream, bool timed, const HostRegistry& registry)
    : stream_(stream), timed_(timed), registry_(registry) {}

CopyLane::~CopyLane() {
  // Host functions may still read the staging jobs: the owner synchronises the stream before
  // destroying the lane (Device's destructor); here we only make sure, without throwing.
  log_failure(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

void CUDART_CB CopyLane::run_host_copy(void* job) {
  const auto* copy = static_cast<const HostCopy*>(job);
  std::memcpy(copy->dst, copy->src, copy->bytes);
}

CopyLane::Staging& CopyLane::next_staging() {
  Staging& s = staging_[next_staging_];
  next_staging_ = (next_staging_ + 1) % staging_.size();
  if (s.memory.data() == nullptr) s.memory = PinnedMemory(kStagingBytes);
  if (s.used) check(cudaEventSynchronize(s.free.get()), "cudaEventSynchronize");
  s.used = false;
  return s;
}

void CopyLane::raw_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  if (registry_.pinned(src, bytes)) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    return;
  }
  for (std::size_t off = 0; off < bytes; off += kStagingBytes) {
    const std::size_t n = std::min(kStagingBytes, bytes - off);
    Staging& s = next_staging();
    s.job = {s.memory.data(), static_cast<const std::byte*>(src) + off, n};
    check(cudaLaunchHostFunc(stream_, &CopyLane::run_host_copy, &s.job), "cudaLaunchHostFunc");
    check(cudaMemcpyAsync(static_cast<std::byte*>(dst) + off, s.memory.data(), n,
                          cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync");
    check(cudaEventRecord(s.free.get(), stream_), "cudaEventRecord");
    s.used = true;
  }
}

void CopyLane::raw_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  if (registry_.pinned(dst, bytes)) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    return;
  }
  for (std::size_t off = 0; off < bytes; off += kStagingBytes) {
    const std::size_t n = std::min(kStagingBytes, bytes - off);
    Staging& s = next_staging();
    check(cudaMemcpyAsync(s.memory.data(), static_cast<const std::byte*>(src) + off, n,
                          cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync");
    s.job = {static_cast<std::byte*>(dst) + off, s.memory.data(), n};
    check(cudaLaunchHostFunc(stream_, &CopyLane::run_host_copy, &s.job), "cudaLaunchHostFunc");
    check(cudaEventRecord(s.free.get(), stream_), "cudaEventRecord");
    s.used = true;
  }
}

void CopyLane::to_device(void* dst, DType dst_dtype, const void* src, DType src_dtype,
                         std::size_t n) {
  const std::size_t bytes = n * size_of(src_dtype);
  if (n > 0) {
    begin_run();
    if (src_dtype == dst_dtype) {
      raw_to_device(dst, src, bytes);
    } else {
      StreamAllocation staging(bytes, stream_);  // freed in stream order, after the convert
      raw_to_device(staging.data(), src, bytes);
      launch_convert(stream_, src_dtype, staging.data(), dst_dtype, dst,
                     static_cast<std::int64_t>(n));
    }
  }
  stats_.h2d_bytes += bytes;
  ++stats_.copies;
}

void CopyLane::to_host(void* dst, DType dst_dtype, const void* src, DType src_dtype,
                       std::size_t n) {
  const std::size_t bytes = n * size_of(dst_dtype);
  if (n > 0) {
    begin_run();
    if (src_dtype == dst_dtype) {
      raw_to_host(dst, src, bytes);
    } else {
      StreamAllocation staging(bytes, stream_);
      launch_convert(stream_, src_dtype, src, dst_dtype, staging.data(),
                     static_cast<std::int64_t>(n));
      raw_to_host(dst, staging.data(), bytes);
    }
  }
  stats_.d2h_bytes += bytes;
  ++stats_.copies;
}

void CopyLane::on_device(void* dst, DType dst_dtype, const void* src, DType src_dtype,
                         std::size_t n) {
  if (n > 0) {
    begin_run();
    if (src_dtype == dst_dtype) {
      check(cudaMemcpyAsync(dst, src, n * size_of(src_dtype), cudaMemcpyDeviceToDevice, stream_),
            "cudaMemcpyAsync");
    } else {
      launch_convert(stream_, src_dtype, src, dst_dtype, dst, static_cast<std::int64_t>(n));
    }
  }
  ++stats_.copies;
}

EventHandle CopyLane::timing_event() {
  if (spare_timing_.empty()) return EventHandle(true);
  EventHandle event = std::move(spare_timing_.back());
  spare_timing_.pop_back();
  return event;
}

void CopyLane::begin_run() {
  if (!timed_ || run_start_) return;
  EventHandle start = timing_event();
  check(cudaEventRecord(start.get(), stream_), "cudaEventRecord");
  run_start_ = std::move(start);
}

void CopyLane::end_run() {
  if (!run_start_) return;
  EventHandle end = timing_event();
  check(cudaEventRecord(end.get(), stream_), "cudaEventRecord");
  runs_.push_back({std::move(*run_start_), std::move(end)});
  run_start_.reset();
}

void CopyLane::add_stats(CopyStats& stats) {
  while (!runs_.empty()) {
    Run& run = runs_.front();
    const cudaError_t state = cudaEventQuery(run.end.get());
    if (state == cudaErrorNotReady) break;
    check(state, "cudaEventQuery");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, run.start.get(), run.end.get()), "cudaEventElapsedTime");
    stats_.busy_s += static_cast<double>(ms) * 1e-3;
    spare_timing_.push_back(std::move(run.start));
    spare_timing_.push_back(std::move(run.end));
    runs_.pop_front();
  }
  stats.h2d_bytes += stats_.h2d_bytes;
  stats.d2h_bytes += stats_.d2h_bytes;
  stats.copies += stats_.copies;
  stats.busy_s += stats_.busy_s;
}

}  // namespace kvpr::kernels::cuda
