// Owners of the CUDA runtime and cuBLAS handles the backend holds: streams, events, a cuBLAS
// handle, device memory (plain and stream-ordered) and pinned host memory. Each owner creates its
// handle in the constructor (an Error naming the call when that fails) and holds it in a
// UniqueHandle (kvpr/common/unique_handle.h), which makes it move-only and releases it when the
// owner dies; a failed release is written to stderr, never thrown.
//
// Lifetimes: every owner here must be destroyed before the CUDA context goes away; the backend's
// shared Device (cuda_device.h) holds them in the order that guarantees it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kvpr/common/unique_handle.h"

namespace kvpr::kernels::cuda {

// A stream that does not synchronise with the legacy default stream.
class Stream {
 public:
  Stream();
  cudaStream_t get() const { return handle_.get(); }

 private:
  struct Destroy {
    void operator()(cudaStream_t stream) const noexcept;
  };
  UniqueHandle<cudaStream_t, Destroy> handle_;
};

// An event, with timing (elapsed_s needs it) or without (cheaper, for fences).
class EventHandle {
 public:
  explicit EventHandle(bool timing);
  cudaEvent_t get() const { return handle_.get(); }

 private:
  struct Destroy {
    void operator()(cudaEvent_t event) const noexcept;
  };
  UniqueHandle<cudaEvent_t, Destroy> handle_;
};

class BlasHandle {
 public:
  BlasHandle();
  cublasHandle_t get() const { return handle_.get(); }

 private:
  struct Destroy {
    void operator()(cublasHandle_t handle) const noexcept;
  };
  UniqueHandle<cublasHandle_t, Destroy> handle_;
};

// An allocation and its size, as the memory owners below hold it.
struct MemoryRange {
  void* data = nullptr;
  std::size_t bytes = 0;
  bool operator==(const MemoryRange&) const = default;
};

// cudaMalloc'ed memory, usable on every stream at once; for the backend's fixed buffers.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(std::size_t bytes);
  void* data() const { return memory_.get().data; }
  std::size_t bytes() const { return memory_.get().bytes; }

 private:
  struct Free {
    void operator()(const MemoryRange& memory) const noexcept;
  };
  UniqueHandle<MemoryRange, Free> memory_;
};

// Stream-ordered memory from the device's memory pool: allocated in `stream`'s order and freed in
// it (cudaFreeAsync) when the owner dies, so it is safe to drop the owner while work that uses the
// memory is still queued on that stream. Work on other streams must be ordered before the free by
// an event (the copy lanes and the Device do this).
class StreamAllocation {
 public:
  StreamAllocation() = default;
  StreamAllocation(std::size_t bytes, cudaStream_t stream);
  void* data() const { return memory_.get().data; }
  std::size_t bytes() const { return memory_.get().bytes; }

 private:
  struct FreeAsync {
    cudaStream_t stream = nullptr;
    void operator()(const MemoryRange& memory) const noexcept;
  };
  UniqueHandle<MemoryRange, FreeAsync> memory_;
};

// Page-locked host memory (cudaHostAlloc).
class PinnedMemory {
 public:
  PinnedMemory() = default;
  explicit PinnedMemory(std::size_t bytes);
  void* data() const { return memory_.get().data; }
  std::size_t bytes() const { return memory_.get().bytes; }

 private:
  struct Free {
    void operator()(const MemoryRange& memory) const noexcept;
  };
  UniqueHandle<MemoryRange, Free> memory_;
};

}  // namespace kvpr::kernels::cuda
