// The seam between a worker and the host memory that holds its sequences: per sequence and layer,
// the attention-input activation and the K and V of every context token, in the model's dtype,
// in paged blocks. Implemented in-process (LocalKvStore: embedded mode and tests) and by the
// kvstore daemon's client over ZeroMQ + UCX (RemoteKvStore).
//
// Writes never fail half-way: `reserve` takes the blocks for n more tokens in every layer up front
// (all or nothing, `overloaded` when the store is full), the caller writes the rows through the
// spans that `locate` returns, and `commit` makes them part of the sequence. Nothing is ever
// evicted or overwritten behind a caller's back.
//
// Per decode step a worker calls reserve and commit once for its whole batch: a store behind a
// daemon answers each batch in at most one round trip (reserve in none while the blocks it already
// holds suffice), and `prefetch` lets a store whose spans must be fetched start that early.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvpr/common/dtype.h"
#include "kvpr/common/kv_part.h"

namespace kvpr::kvstore {

using SeqId = std::uint64_t;

using kvpr::Part;

inline constexpr std::int64_t kBlockTokens = 16;  // tokens per block unless a store says otherwise

struct StoreShape {
  std::int64_t n_layers = 0;
  std::int64_t h = 0;     // width of an activation row
  std::int64_t h_kv = 0;  // width of a K row and of a V row
  DType dtype = DType::f32;
  std::int64_t block_tokens = kBlockTokens;

  std::int64_t width(Part part) const { return part == Part::act ? h : h_kv; }
  std::size_t row_bytes(Part part) const {
    return static_cast<std::size_t>(width(part)) * size_of(dtype);
  }
  // Bytes of one block: activations, K and V of block_tokens tokens of one layer.
  std::size_t block_bytes() const {
    return static_cast<std::size_t>(block_tokens) * (row_bytes(Part::act) + 2 * row_bytes(Part::k));
  }
};

// Rows [t0, t0 + n_tokens) of one part of one layer, contiguous in host memory (row-major).
struct HostSpan {
  std::byte* data = nullptr;
  std::int64_t t0 = 0;
  std::int64_t n_tokens = 0;
};

struct StoreStats {
  std::uint64_t capacity_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint64_t sequences = 0;
  std::uint64_t lookups = 0;              // locate calls
  std::uint64_t allocation_failures = 0;  // reserve calls answered `overloaded`

  std::uint64_t free_bytes() const { return capacity_bytes - std::min(capacity_bytes, used_bytes); }
};

class KvStoreClient {
 public:
  virtual ~KvStoreClient() = default;

  virtual const StoreShape& shape() const = 0;
  virtual SeqId open() = 0;
  // All or nothing for the whole batch: tokens [length, length + n) of every sequence get blocks
  // in every layer; one round trip to a daemon at most, none when every sequence's blocks suffice.
  // Idempotent: a reservation left over from a failed step is reused, never leaked. A sequence
  // listed twice, an unknown one or n < 0 fails (`failed`) before anything changes; a store too
  // full for the whole batch answers `overloaded` and reserves nothing.
  virtual void reserve(std::span<const SeqId> seqs, std::int64_t n_tokens) = 0;
  // The next n reserved tokens of every sequence now hold data; one round trip at most. All or
  // nothing: checked for every sequence before any changes.
  virtual void commit(std::span<const SeqId> seqs, std::int64_t n_tokens) = 0;
  // Hint: rows of these ranges will be located soon. A store whose spans need fetching (the
  // RemoteKvStore mirror across hosts) starts the fetch now, in the background, so the later
  // locate() of the same range does not block on the network. Default: nothing to do.
  struct Range {
    SeqId seq;
    std::int64_t layer;
    Part part;
    std::int64_t t0, t1;
  };
  virtual void prefetch(std::span<const Range> /*ranges*/) {}

  // One sequence: the batch calls with a batch of one. (A class that overrides the batch forms
  // brings these back with `using KvStoreClient::reserve; using KvStoreClient::commit;`.)
  void reserve(SeqId seq, std::int64_t n_tokens) {
    reserve(std::span<const SeqId>(&seq, 1), n_tokens);
  }
  void commit(SeqId seq, std::int64_t n_tokens) {
    commit(std::span<const SeqId>(&seq, 1), n_tokens);
  }

  // Host memory of tokens [t0, t1) of one part of one layer; t1 may reach into reserved rows.
  // The spans stay valid until the sequence is freed.
  virtual std::vector<HostSpan> locate(SeqId seq, std::int64_t layer, Part part, std::int64_t t0,
                                       std::int64_t t1) = 0;
  virtual std::int64_t length(SeqId seq) const = 0;  // committed tokens
  // Drops tokens [n_tokens, length) and their blocks (a rollback: benchmarks, rejected drafts).
  virtual void truncate(SeqId seq, std::int64_t n_tokens) = 0;
  virtual void free(SeqId seq) = 0;
  virtual StoreStats stats() const = 0;
  // Host-attention threads this client may use of the `wanted` it runs with: its share of the
  // node's budget where a kvstore daemon gives one out (at registration, renewed with every
  // heartbeat), else all of them.
  virtual int host_threads(int wanted) const { return wanted; }
};

}  // namespace kvpr::kvstore
