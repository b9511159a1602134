// Host memory shared by several stores: one arena cut into fixed-size pages, a free list and
// capacity accounting. The kvstore daemon owns one pool (its arena is allocated by UCX so clients
// can map it) and gives every registered client a LocalKvStore view over it, each with its own
// StoreShape; an embedded LocalKvStore owns a private pool whose pages are exactly its blocks.
//
// Thread-safe (one mutex). The pool never touches page contents: a page belongs to whoever
// allocated it until it is released, and the arena lives as long as the pool (or, for a borrowed
// arena, as long as its owner keeps it mapped, which must outlive the pool).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

namespace kvpr::kvstore {

class PagePool {
 public:
  // Owns an anonymous mapping of capacity_bytes rounded down to whole pages (MAP_NORESERVE: host
  // pages are committed when first written). capacity_bytes is what stats report as capacity.
  PagePool(std::size_t page_bytes, std::uint64_t capacity_bytes);
  // Borrows arena_bytes of memory at arena (owned by the caller, e.g. a UCX mapping).
  PagePool(void* arena, std::size_t arena_bytes, std::size_t page_bytes);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Appends n page indices to pages, all or nothing; false (and nothing taken) when fewer than n
  // are free, which is also counted as an allocation failure.
  bool allocate(std::size_t n, std::vector<std::size_t>& pages);
  void release(const std::vector<std::size_t>& pages);

  std::byte* page(std::size_t index) const { return arena_ + index * page_bytes_; }
  std::uint64_t offset_of_page(std::size_t index) const {
    return static_cast<std::uint64_t>(index) * page_bytes_;
  }
  // The arena offset of p, or nullopt when p is not inside the arena (maps a span back to the
  // offset a remote client uses).
  std::optional<std::uint64_t> offset_of(const void* p) const;

  std::size_t page_bytes() const { return page_bytes_; }
  std::size_t n_pages() const { return n_pages_; }
  std::size_t free_pages() const;
  std::uint64_t used_bytes() const;
  std::uint64_t capacity_bytes() const { return capacity_bytes_; }
  std::uint64_t allocation_failures() const;

  // Sequence ids are unique across every view of one pool. They are small counters, private to
  // the process: the daemon hands out random capabilities and maps them to these.
  std::uint64_t next_sequence_id();

  void* arena() const { return arena_; }
  std::size_t arena_bytes() const { return arena_bytes_; }

 private:
  std::byte* arena_ = nullptr;
  std::size_t arena_bytes_ = 0;
  std::size_t page_bytes_ = 0;
  std::size_t n_pages_ = 0;
  std::uint64_t capacity_bytes_ = 0;
  bool owned_ = false;

  mutable std::mutex mutex_;
  std::vector<std::size_t> free_;
  std::uint64_t allocation_failures_ = 0;
  std::uint64_t next_sequence_id_ = 1;
};

}  // namespace kvpr::kvstore
