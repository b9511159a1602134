// Copies on one stream, with dtype conversion and the choice of path, and their counters.
//
// Paths, per copy:
// - Host memory the device can DMA (registered with cudaHostRegister, or page-locked): one
//   cudaMemcpyAsync straight between the host memory and the device. This is the path for the
//   host KV store once the worker has registered its arena: K,V and activations go from the
//   store to the device with no host copy.
// - Any other host memory: through this lane's pinned staging buffers (4 × 4 MiB, allocated on
//   first use). A host function in stream order copies between the caller's memory and a
//   staging buffer, and the DMA moves the staging buffer; a buffer is reused only after the event
//   recorded behind its last use has completed. Slower (one extra memcpy per byte, not
//   overlapped within the lane), but asynchronous and in stream order, like the fast path.
// - Different dtypes: the bytes cross the link in the host's dtype (fp16 from the store stays
//   2 bytes per element on PCIe), land in a stream-ordered staging allocation, and convert.cu
//   widens them on the device (or narrows before a device→host copy).
//
// Counters (CopyStats): bytes as the host sees them, copies, and on the copy queue the time the
// copies took on the device: a run of consecutive copies is bracketed by two timing events, a run
// ends when the queue records or waits on an event or synchronises, and completed runs are summed
// lazily when stats are read. One lane per stream, driven by the backend's owner thread.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <deque>
#include <optional>
#include <vector>

#include "cuda_handles.h"
#include "host_registry.h"
#include "kvpr/common/dtype.h"
#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cuda {

class CopyLane {
 public:
  // `timed`: measure busy time (the copy queue); `registry` outlives the lane.
  CopyLane(cudaStream_t stream, bool timed, const HostRegistry& registry);
  ~CopyLane();
  CopyLane(const CopyLane&) = delete;
  CopyLane& operator=(const CopyLane&) = delete;

  // n elements: host src (src_dtype) → device dst (dst_dtype).
  void to_device(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t n);
  // n elements: device src (src_dtype) → host dst (dst_dtype).
  void to_host(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t n);
  // n elements between two non-overlapping device ranges.
  void on_device(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t n);

  // Ends the current run of timed copies (before the stream records or waits on an event).
  void end_run();
  // Adds this lane's counters, and the busy time of every completed run, to `stats`.
  void add_stats(CopyStats& stats);

 private:
  struct HostCopy {  // what a staging host function copies
    void* dst = nullptr;
    const void* src = nullptr;
    std::size_t bytes = 0;
  };
  struct Staging {
    PinnedMemory memory;
    EventHandle free{false};  // recorded behind the buffer's last use
    bool used = false;
    HostCopy job;  // read by the host function; stays put until `free` has completed
  };
  struct Run {
    EventHandle start;
    EventHandle end;
  };

  static void CUDART_CB run_host_copy(void* job);  // a host function: memcpy only, no CUDA calls
  void raw_to_device(void* dst, const void* src, std::size_t bytes);
  void raw_to_host(void* dst, const void* src, std::size_t bytes);
  Staging& next_staging();
  void begin_run();
  EventHandle timing_event();

  cudaStream_t stream_;
  bool timed_;
  const HostRegistry& registry_;
  std::array<Staging, 4> staging_;
  std::size_t next_staging_ = 0;
  std::optional<EventHandle> run_start_;  // set while a run is open
  std::deque<Run> runs_;
  std::vector<EventHandle> spare_timing_;
  CopyStats stats_;
};

}  // namespace kvpr::kernels::cuda
