// Which host memory the device's copy engine can read and write directly: ranges registered with
// cudaHostRegister through Backend::register_host, plus anything CUDA itself reports as
// page-locked (cudaHostAlloc'ed buffers). Copies from or to any other host memory go through the
// copy lanes' pinned staging buffers. Thread-safe (one mutex): register_host may come from a
// thread other than the one enqueueing copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

namespace kvpr::kernels::cuda {

class HostRegistry {
 public:
  // Registers [ptr, ptr + bytes) with cudaHostRegister. Returns false, after one line on stderr
  // saying why and what happens instead, when the runtime refuses.
  bool add(void* ptr, std::size_t bytes);
  // Unregisters the range `add` registered at ptr. Returns false, doing nothing, when there is
  // none: callers pair register/unregister even when registering failed (Backend's contract lets
  // them), so an unknown pointer is not an error.
  bool remove(void* ptr);
  // Whether [ptr, ptr + bytes) can be the host side of an asynchronous DMA.
  bool pinned(const void* ptr, std::size_t bytes) const;
  // Unregisters everything still registered; never throws.
  void clear() noexcept;

 private:
  mutable std::mutex mutex_;
  std::map<std::uintptr_t, std::size_t> ranges_;  // start → bytes
};

}  // namespace kvpr::kernels::cuda
