// See host_registry.h.
#include "host_registry.h"

#include <cuda_runtime_api.h>

#include "cuda_check.h"
#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::kernels::cuda {

bool HostRegistry::add(void* ptr, std::size_t bytes) {
  if (ptr == nullptr || bytes == 0) fail("register_host: empty range");
  const cudaError_t err = cudaHostRegister(ptr, bytes, cudaHostRegisterDefault);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky; keep it from surfacing at the next launch check
    log::warn("cuda backend: cudaHostRegister of ", bytes,
              " bytes failed: ", cudaGetErrorString(err), " (", cudaGetErrorName(err),
              "); copies from that memory go through pinned staging buffers instead");
    return false;
  }
  std::lock_guard lock(mutex_);
  ranges_[reinterpret_cast<std::uintptr_t>(ptr)] = bytes;
  return true;
}

bool HostRegistry::remove(void* ptr) {
  {
    std::lock_guard lock(mutex_);
    const auto it = ranges_.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == ranges_.end()) return false;
    ranges_.erase(it);
  }
  check(cudaHostUnregister(ptr), "cudaHostUnregister");
  return true;
}

bool HostRegistry::pinned(const void* ptr, std::size_t bytes) const {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  {
    std::lock_guard lock(mutex_);
    auto it = ranges_.upper_bound(p);
    if (it != ranges_.begin()) {
      --it;
      if (p >= it->first && p + bytes <= it->first + it->second) return true;
    }
  }
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

void HostRegistry::clear() noexcept {
  std::lock_guard lock(mutex_);
  for (const auto& [start, bytes] : ranges_) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the ranges are keyed by address; this is one
    log_failure(cudaHostUnregister(reinterpret_cast<void*>(start)), "cudaHostUnregister");
  }
  ranges_.clear();
}

}  // namespace kvpr::kernels::cuda
