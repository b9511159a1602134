// See cuda_handles.h. Move assignment releases what the target held first, then steals.
#include "cuda_handles.h"

#include "cuda_check.h"
#include "kvpr/common/log.h"

namespace kvpr::kernels::cuda {

Stream::Stream() {
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

Stream::~Stream() {
  if (stream_ != nullptr) log_failure(cudaStreamDestroy(stream_), "cudaStreamDestroy");
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) log_failure(cudaStreamDestroy(stream_), "cudaStreamDestroy");
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

EventHandle::EventHandle(bool timing) {
  check(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreateWithFlags");
}

EventHandle::~EventHandle() {
  // Destroying an event that is recorded but not yet complete is allowed: the runtime releases it
  // once the device reaches it.
  if (event_ != nullptr) log_failure(cudaEventDestroy(event_), "cudaEventDestroy");
}

EventHandle& EventHandle::operator=(EventHandle&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) log_failure(cudaEventDestroy(event_), "cudaEventDestroy");
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

BlasHandle::BlasHandle() {
  check_blas(cublasCreate(&handle_), "cublasCreate");
}

BlasHandle::~BlasHandle() {
  if (handle_ == nullptr) return;
  const cublasStatus_t status = cublasDestroy(handle_);
  if (status != CUBLAS_STATUS_SUCCESS) {
    log::warn("cuda backend: cublasDestroy: ", cublasGetStatusString(status),
              " [in a destructor; continuing]");
  }
}

BlasHandle& BlasHandle::operator=(BlasHandle&& other) noexcept {
  if (this != &other) {
    BlasHandle dying(std::move(*this));
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

DeviceMemory::DeviceMemory(std::size_t bytes) : bytes_(bytes) {
  check(cudaMalloc(&data_, bytes == 0 ? 1 : bytes), "cudaMalloc");
}

DeviceMemory::~DeviceMemory() {
  if (data_ != nullptr) log_failure(cudaFree(data_), "cudaFree");
}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) log_failure(cudaFree(data_), "cudaFree");
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

StreamAllocation::StreamAllocation(std::size_t bytes, cudaStream_t stream)
    : bytes_(bytes), stream_(stream) {
  check(cudaMallocAsync(&data_, bytes == 0 ? 1 : bytes, stream), "cudaMallocAsync");
}

StreamAllocation::~StreamAllocation() {
  release();
}

void StreamAllocation::release() noexcept {
  if (data_ != nullptr) log_failure(cudaFreeAsync(data_, stream_), "cudaFreeAsync");
  data_ = nullptr;
  bytes_ = 0;
}

StreamAllocation& StreamAllocation::operator=(StreamAllocation&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    stream_ = other.stream_;
  }
  return *this;
}

PinnedMemory::PinnedMemory(std::size_t bytes) : bytes_(bytes) {
  check(cudaHostAlloc(&data_, bytes == 0 ? 1 : bytes, cudaHostAllocDefault), "cudaHostAlloc");
}

PinnedMemory::~PinnedMemory() {
  if (data_ != nullptr) log_failure(cudaFreeHost(data_), "cudaFreeHost");
}

PinnedMemory& PinnedMemory::operator=(PinnedMemory&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) log_failure(cudaFreeHost(data_), "cudaFreeHost");
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

}  // namespace kvpr::kernels::cuda
