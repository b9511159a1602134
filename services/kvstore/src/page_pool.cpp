#include "kvpr/kvstore/page_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "kvpr/common/error.h"

namespace kvpr::kvstore {

PagePool::PagePool(std::size_t page_bytes, std::uint64_t capacity_bytes)
    : page_bytes_(page_bytes), capacity_bytes_(capacity_bytes), owned_(true) {
  if (page_bytes == 0) fail("kvstore: page size of 0 bytes");
  n_pages_ = static_cast<std::size_t>(capacity_bytes / page_bytes);
  arena_bytes_ = n_pages_ * page_bytes;
  if (arena_bytes_ > 0) {
    void* p = mmap(nullptr, arena_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      raise(ErrorKind::overloaded, "kvstore: cannot map ", arena_bytes_,
            " bytes of host memory: ", std::strerror(errno));
    }
    arena_ = static_cast<std::byte*>(p);
  }
  free_.reserve(n_pages_);
  for (std::size_t i = n_pages_; i > 0; --i) free_.push_back(i - 1);
}

PagePool::PagePool(void* arena, std::size_t arena_bytes, std::size_t page_bytes)
    : arena_(static_cast<std::byte*>(arena)),
      arena_bytes_(arena_bytes),
      page_bytes_(page_bytes),
      capacity_bytes_(arena_bytes) {
  if (page_bytes == 0) fail("kvstore: page size of 0 bytes");
  if (arena == nullptr && arena_bytes > 0) fail("kvstore: null arena of ", arena_bytes, " bytes");
  n_pages_ = arena_bytes / page_bytes;
  free_.reserve(n_pages_);
  for (std::size_t i = n_pages_; i > 0; --i) free_.push_back(i - 1);
}

PagePool::~PagePool() {
  if (owned_ && arena_ != nullptr) munmap(arena_, arena_bytes_);
}

bool PagePool::allocate(std::size_t n, std::vector<std::size_t>& pages) {
  std::lock_guard lock(mutex_);
  if (n > free_.size()) {
    ++allocation_failures_;
    return false;
  }
  for (std::size_t i = 0; i < n; ++i) {
    pages.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void PagePool::release(const std::vector<std::size_t>& pages) {
  std::lock_guard lock(mutex_);
  free_.insert(free_.end(), pages.begin(), pages.end());
}

std::optional<std::uint64_t> PagePool::offset_of(const void* p) const {
  const auto* b = static_cast<const std::byte*>(p);
  if (arena_ == nullptr || b < arena_ || b >= arena_ + arena_bytes_) return std::nullopt;
  return static_cast<std::uint64_t>(b - arena_);
}

std::size_t PagePool::free_pages() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

std::uint64_t PagePool::used_bytes() const {
  std::lock_guard lock(mutex_);
  return static_cast<std::uint64_t>(n_pages_ - free_.size()) * page_bytes_;
}

std::uint64_t PagePool::allocation_failures() const {
  std::lock_guard lock(mutex_);
  return allocation_failures_;
}

std::uint64_t PagePool::next_sequence_id() {
  std::lock_guard lock(mutex_);
  return next_sequence_id_++;
}

}  // namespace kvpr::kvstore
