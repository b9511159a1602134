// The in-process KvStoreClient: a block table per sequence and layer over pages of a PagePool.
// Either it owns a private pool whose pages are exactly its blocks (embedded mode and tests:
// LocalKvStore(shape, capacity_bytes)), or it is one client's view of a pool shared with other
// views of other shapes (the kvstore daemon: one view per registered client; a block then uses the
// first block_bytes() of a page). Destroying a view returns every page it holds to the pool.
//
// Thread-safe (one mutex); the host memory behind returned spans is read and written by the
// backend's copy thread without the lock, which is safe because a block belongs to one sequence
// until that sequence is freed.
#pragma once

#include <cstddef>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "kvpr/kvstore/page_pool.h"

namespace kvpr::kvstore {

// A refusal because one client reached its own limit (pages, sequences, metadata), not because the
// store is full: the same kind as a full store (it may succeed after the client frees something),
// a type of its own so the daemon counts it apart (kvpr_rejected_messages_total{reason="quota"}).
class QuotaExceeded : public Error {
 public:
  explicit QuotaExceeded(const std::string& message) : Error(ErrorKind::overloaded, message) {}
};

// What one reserve call added to one sequence (the daemon sends it to a remote client, which keeps
// its own block table): blocks [first_block, first_block + blocks_per_layer) of every layer.
struct Reservation {
  std::int64_t reserved_tokens = 0;  // tokens with blocks, after the call
  std::int64_t first_block = 0;
  std::int64_t blocks_per_layer = 0;
  std::vector<std::uint64_t> offsets;  // arena offsets of the new blocks, layer-major
};

class LocalKvStore final : public KvStoreClient {
 public:
  // Owns a pool of capacity_bytes cut into blocks of shape.block_bytes().
  LocalKvStore(const StoreShape& shape, std::uint64_t capacity_bytes);
  // A view over pool, which must outlive it; shape.block_bytes() must fit pool.page_bytes().
  LocalKvStore(const StoreShape& shape, PagePool& pool);
  ~LocalKvStore() override;
  LocalKvStore(const LocalKvStore&) = delete;
  LocalKvStore& operator=(const LocalKvStore&) = delete;

  const StoreShape& shape() const override { return shape_; }
  SeqId open() override;
  using KvStoreClient::commit;
  using KvStoreClient::reserve;
  void reserve(std::span<const SeqId> seqs, std::int64_t n_tokens) override {
    reserve_blocks(seqs, n_tokens);
  }
  void commit(std::span<const SeqId> seqs, std::int64_t n_tokens) override;
  std::vector<HostSpan> locate(SeqId seq, std::int64_t layer, Part part, std::int64_t t0,
                               std::int64_t t1) override;
  std::int64_t length(SeqId seq) const override;
  void truncate(SeqId seq, std::int64_t n_tokens) override;
  void free(SeqId seq) override;
  // A view reports its own used bytes (pages held), sequences, lookups and failed reserves, and
  // the pool's capacity.
  StoreStats stats() const override;

  // commit() for a client that keeps its own block tables (RemoteKvStore, through the daemon):
  // such a client reserves tokens inside blocks it already holds without asking, so the n tokens
  // need only lie inside each sequence's blocks, not inside its reserved tokens. All or nothing.
  void commit_in_blocks(std::span<const SeqId> seqs, std::int64_t n_tokens);

  // reserve() that also says which blocks were added: one Reservation per sequence, in order.
  std::vector<Reservation> reserve_blocks(std::span<const SeqId> seqs, std::int64_t n_tokens);

  // At most `pages` pages held at once (the daemon's per-client quota); a reserve that would pass
  // it throws QuotaExceeded and takes nothing. Default: no limit but the pool's.
  void set_page_quota(std::size_t pages);

  // The host memory behind every span, for registering it with a device's copy engine once.
  void* arena() const { return pool_->arena(); }
  std::size_t arena_bytes() const { return pool_->arena_bytes(); }
  const PagePool& pool() const { return *pool_; }

 private:
  struct Sequence {
    std::int64_t length = 0;                       // committed tokens
    std::int64_t reserved = 0;                     // tokens with blocks
    std::vector<std::vector<std::size_t>> blocks;  // [layer][block index] -> pool page
  };

  Sequence& find(SeqId seq);
  const Sequence& find(SeqId seq) const;
  void release(Sequence& s);

  StoreShape shape_;
  std::unique_ptr<PagePool> owned_pool_;  // set when constructed with a capacity
  PagePool* pool_;

  mutable std::mutex mutex_;
  std::map<SeqId, Sequence> sequences_;
  std::size_t pages_held_ = 0;
  std::size_t page_quota_ = std::numeric_limits<std::size_t>::max();
  mutable std::uint64_t lookups_ = 0;
  std::uint64_t allocation_failures_ = 0;
};

}  // namespace kvpr::kvstore
