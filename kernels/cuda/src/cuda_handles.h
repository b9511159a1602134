// Move-only owners of the CUDA runtime and cuBLAS handles the backend holds: streams, events, a
// cuBLAS handle, device memory (plain and stream-ordered) and pinned host memory. Each owner
// creates its handle in the constructor (an Error naming the call when that fails) and releases
// it in the destructor, which never throws: a failed release is written to stderr.
//
// Lifetimes: every owner here must be destroyed before the CUDA context goes away; the backend's
// shared Device (cuda_device.h) holds them in the order that guarantees it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

namespace kvpr::kernels::cuda {

// A stream that does not synchronise with the legacy default stream.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// An event, with timing (elapsed_s needs it) or without (cheaper, for fences).
class EventHandle {
 public:
  explicit EventHandle(bool timing);
  ~EventHandle();
  EventHandle(EventHandle&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  EventHandle& operator=(EventHandle&& other) noexcept;
  EventHandle(const EventHandle&) = delete;
  EventHandle& operator=(const EventHandle&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class BlasHandle {
 public:
  BlasHandle();
  ~BlasHandle();
  BlasHandle(BlasHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  BlasHandle& operator=(BlasHandle&& other) noexcept;
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// cudaMalloc'ed memory, usable on every stream at once; for the backend's fixed buffers.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(std::size_t bytes);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Stream-ordered memory from the device's memory pool: allocated in `stream`'s order and freed in
// it (cudaFreeAsync) when the owner dies, so it is safe to drop the owner while work that uses the
// memory is still queued on that stream. Work on other streams must be ordered before the free by
// an event (the copy lanes and the Device do this).
class StreamAllocation {
 public:
  StreamAllocation() = default;
  StreamAllocation(std::size_t bytes, cudaStream_t stream);
  ~StreamAllocation();
  StreamAllocation(StreamAllocation&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        bytes_(std::exchange(other.bytes_, 0)),
        stream_(other.stream_) {}
  StreamAllocation& operator=(StreamAllocation&& other) noexcept;
  StreamAllocation(const StreamAllocation&) = delete;
  StreamAllocation& operator=(const StreamAllocation&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Page-locked host memory (cudaHostAlloc).
class PinnedMemory {
 public:
  PinnedMemory() = default;
  explicit PinnedMemory(std::size_t bytes);
  ~PinnedMemory();
  PinnedMemory(PinnedMemory&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  PinnedMemory& operator=(PinnedMemory&& other) noexcept;
  PinnedMemory(const PinnedMemory&) = delete;
  PinnedMemory& operator=(const PinnedMemory&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace kvpr::kernels::cuda
