// See cuda_handles.h. Each constructor creates into a local and hands it to its UniqueHandle only
// once the call succeeded; each deleter logs a failed release (log_failure) and carries on.
#include "cuda_handles.h"

#include "cuda_check.h"
#include "kvpr/common/log.h"

namespace kvpr::kernels::cuda {

Stream::Stream() {
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  handle_.reset(stream);
}

void Stream::Destroy::operator()(cudaStream_t stream) const noexcept {
  log_failure(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

EventHandle::EventHandle(bool timing) {
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreateWithFlags");
  handle_.reset(event);
}

// Destroying an event that is recorded but not yet complete is allowed: the runtime releases it
// once the device reaches it.
void EventHandle::Destroy::operator()(cudaEvent_t event) const noexcept {
  log_failure(cudaEventDestroy(event), "cudaEventDestroy");
}

BlasHandle::BlasHandle() {
  cublasHandle_t handle = nullptr;
  check_blas(cublasCreate(&handle), "cublasCreate");
  handle_.reset(handle);
}

void BlasHandle::Destroy::operator()(cublasHandle_t handle) const noexcept {
  const cublasStatus_t status = cublasDestroy(handle);
  if (status != CUBLAS_STATUS_SUCCESS) {
    log::warn("cuda backend: cublasDestroy: ", cublasGetStatusString(status),
              " [in a destructor; continuing]");
  }
}

DeviceMemory::DeviceMemory(std::size_t bytes) {
  void* data = nullptr;
  check(cudaMalloc(&data, bytes == 0 ? 1 : bytes), "cudaMalloc");
  memory_.reset({data, bytes});
}

void DeviceMemory::Free::operator()(const MemoryRange& memory) const noexcept {
  log_failure(cudaFree(memory.data), "cudaFree");
}

StreamAllocation::StreamAllocation(std::size_t bytes, cudaStream_t stream) {
  void* data = nullptr;
  check(cudaMallocAsync(&data, bytes == 0 ? 1 : bytes, stream), "cudaMallocAsync");
  memory_ = UniqueHandle<MemoryRange, FreeAsync>({data, bytes}, FreeAsync{stream});
}

void StreamAllocation::FreeAsync::operator()(const MemoryRange& memory) const noexcept {
  log_failure(cudaFreeAsync(memory.data, stream), "cudaFreeAsync");
}

PinnedMemory::PinnedMemory(std::size_t bytes) {
  void* data = nullptr;
  check(cudaHostAlloc(&data, bytes == 0 ? 1 : bytes, cudaHostAllocDefault), "cudaHostAlloc");
  memory_.reset({data, bytes});
}

void PinnedMemory::Free::operator()(const MemoryRange& memory) const noexcept {
  log_failure(cudaFreeHost(memory.data), "cudaFreeHost");
}

}  // namespace kvpr::kernels::cuda
