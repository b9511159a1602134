// Small per-call arguments of ops (segment tables, positions, token ids, RoPE frequencies) on
// their way to the device. The caller's spans live only for the call, and the op runs later in
// stream order, so the bytes are first copied into a pinned host ring and uploaded from there by
// an asynchronous copy into the same offset of a device ring; kernels read the device copy.
//
// Reuse: each upload stays untouched until the work enqueued after it has completed. The next
// upload records an event that closes the previous one (everything enqueued so far, including
// the kernels that read it, comes before that event); a region is overwritten only after its
// closing event has completed, which the ring waits for on the host when it wraps around. One
// ring per stream, used by that stream's owner thread only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <deque>
#include <vector>

#include "cuda_handles.h"

namespace kvpr::kernels::cuda {

class UploadRing {
 public:
  UploadRing(cudaStream_t stream, std::size_t capacity);
  UploadRing(const UploadRing&) = delete;
  UploadRing& operator=(const UploadRing&) = delete;

  // Copies `bytes` from `data` into the ring and enqueues their upload on the stream; returns the
  // device address (256-byte aligned), valid for work enqueued on this stream from now on until
  // the ring comes round again. Grows the ring (after a stream synchronisation) when one upload
  // is larger than the whole ring.
  void* upload(const void* data, std::size_t bytes);

 private:
  struct Region {
    std::size_t begin = 0;
    std::size_t end = 0;
    EventHandle closed;  // completes once the work that may read the region has run
  };

  void close_open_region();
  void wait_for(std::size_t begin, std::size_t end);  // blocks until [begin, end) is free

  cudaStream_t stream_;
  std::size_t capacity_ = 0;
  PinnedMemory host_;
  DeviceMemory device_;
  std::size_t head_ = 0;
  bool open_ = false;  // the last upload has no closing event yet
  std::size_t open_begin_ = 0;
  std::size_t open_end_ = 0;
  std::deque<Region> closed_;       // oldest first
  std::vector<EventHandle> spare_;  // events of regions already free
};

}  // namespace kvpr::kernels::cuda
