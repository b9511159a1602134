// What one CUDA backend owns on its device: the compute and copy streams, a copy lane per stream,
// the upload ring for op arguments, the cuBLAS handle bound to the compute stream, and the
// registry of host memory the copy engine can reach. Shared (std::shared_ptr) between the backend
// and every DeviceBuffer it hands out, so a buffer may outlive the backend object and still free
// its memory in stream order.
//
// Device memory of buffers comes from the device's stream-ordered pool: allocated in the compute
// stream's order and made visible to the copy stream by an event; freed after both streams have
// passed everything enqueued so far (the copy stream's tail is waited on by the compute stream,
// which then frees). So dropping a buffer while work on it is still queued is safe.
//
// Threads: one owner thread drives the streams; the registry alone is thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <string>

#include "copy_lane.h"
#include "cuda_handles.h"
#include "host_registry.h"
#include "kvpr/kernels/backend.h"
#include "upload_ring.h"

namespace kvpr::kernels::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int sm_count = 0;
  int cc_major = 0;
  int cc_minor = 0;
  int clock_khz = 0;
  std::size_t total_memory = 0;
};

class Device {
 public:
  // Makes `ordinal` current, checks it can run this build (stream-ordered allocator), and creates
  // the streams, cuBLAS handle and buffers. Errors name the CUDA call that failed.
  explicit Device(int ordinal);
  // Synchronises both streams, unregisters host memory still registered; never throws.
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceInfo& info() const { return info_; }
  cudaStream_t stream(Queue queue) const {
    return queue == Queue::copy ? copy_.get() : compute_.get();
  }
  CopyLane& lane(Queue queue) { return queue == Queue::copy ? copy_lane_ : compute_lane_; }
  UploadRing& args() { return args_; }  // compute stream
  cublasHandle_t blas() const { return blas_.get(); }
  HostRegistry& registry() { return registry_; }

  void* allocate(std::size_t bytes);
  void release(void* data) noexcept;
  void synchronize();
  CopyStats copy_stats();

 private:
  DeviceInfo info_;
  // Construction order; destroyed in reverse after the destructor body has drained both streams.
  Stream compute_;
  Stream copy_;
  BlasHandle blas_;
  DeviceMemory blas_workspace_;
  HostRegistry registry_;
  UploadRing args_;
  CopyLane compute_lane_;
  CopyLane copy_lane_;
};

}  // namespace kvpr::kernels::cuda
