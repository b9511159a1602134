// The in-process KvStoreClient: one arena of `capacity_bytes` of host memory cut into fixed-size
// blocks, a free list, and a block table per sequence and layer. Thread-safe (one mutex); the host
// memory behind returned spans is read and written by the backend's copy thread without the lock,
// which is safe because a block belongs to one sequence until that sequence is freed.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <vector>

#include "kvpr/kvstore/kv_store_client.h"

namespace kvpr::kvstore {

class LocalKvStore final : public KvStoreClient {
 public:
  LocalKvStore(const StoreShape& shape, std::uint64_t capacity_bytes);
  ~LocalKvStore() override;
  LocalKvStore(const LocalKvStore&) = delete;
  LocalKvStore& operator=(const LocalKvStore&) = delete;

  const StoreShape& shape() const override { return shape_; }
  SeqId open() override;
  void reserve(SeqId seq, std::int64_t n_tokens) override;
  std::vector<HostSpan> locate(SeqId seq, std::int64_t layer, Part part, std::int64_t t0,
                               std::int64_t t1) override;
  void commit(SeqId seq, std::int64_t n_tokens) override;
  std::int64_t length(SeqId seq) const override;
  void truncate(SeqId seq, std::int64_t n_tokens) override;
  void free(SeqId seq) override;
  StoreStats stats() const override;

  // The host memory behind every span, for registering it with a device's copy engine once.
  void* arena() const { return arena_; }
  std::size_t arena_bytes() const { return arena_bytes_; }

 private:
  struct Sequence {
    std::int64_t length = 0;                       // committed tokens
    std::int64_t reserved = 0;                     // tokens with blocks
    std::vector<std::vector<std::size_t>> blocks;  // [layer][block index] -> arena block
  };

  Sequence& find(SeqId seq);
  const Sequence& find(SeqId seq) const;
  std::byte* block_ptr(std::size_t block) const;

  StoreShape shape_;
  std::uint64_t capacity_bytes_;
  std::size_t n_blocks_;
  std::byte* arena_ = nullptr;  // mmap'ed, MAP_NORESERVE: pages are committed when first written
  std::size_t arena_bytes_ = 0;

  mutable std::mutex mutex_;
  std::vector<std::size_t> free_blocks_;
  std::map<SeqId, Sequence> sequences_;
  SeqId next_id_ = 1;
  mutable std::uint64_t lookups_ = 0;
  std::uint64_t allocation_failures_ = 0;
};

}  // namespace kvpr::kvstore
