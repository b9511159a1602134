// The layout of one block, shared by every KvStoreClient implementation: block_tokens activation
// rows, then block_tokens K rows, then block_tokens V rows of one layer, each row-major. A block
// starts at the beginning of a pool page; a store and its remote clients agree on this layout, so
// a client that knows a block's arena offset finds any row without asking.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_client.h"

namespace kvpr::kvstore {

// Far more than any context; keeps token arithmetic away from overflow.
inline constexpr std::int64_t kMaxTokens = std::int64_t{1} << 40;

// Byte offset of a part's first row inside a block.
inline std::size_t part_offset(const StoreShape& shape, Part part) {
  const auto bt = static_cast<std::size_t>(shape.block_tokens);
  std::size_t offset = 0;
  if (part != Part::act) offset += bt * shape.row_bytes(Part::act);
  if (part == Part::v) offset += bt * shape.row_bytes(Part::k);
  return offset;
}

// Blocks needed to hold n_tokens tokens.
inline std::int64_t blocks_for(const StoreShape& shape, std::int64_t n_tokens) {
  return (n_tokens + shape.block_tokens - 1) / shape.block_tokens;
}

// Splits rows [t0, t1) of one part into spans that stay inside one block each.
// block_base(b) returns the address of block b of the layer.
template <typename BlockBase>
std::vector<HostSpan> spans_of(const StoreShape& shape, Part part, std::int64_t t0, std::int64_t t1,
                               BlockBase&& block_base) {
  const std::int64_t bt = shape.block_tokens;
  const std::size_t row = shape.row_bytes(part);
  const std::size_t first_row = part_offset(shape, part);
  std::vector<HostSpan> spans;
  for (std::int64_t t = t0; t < t1;) {
    const std::int64_t in_block = t % bt;
    const std::int64_t n = std::min(bt - in_block, t1 - t);
    std::byte* base = block_base(t / bt) + first_row;
    spans.push_back({base + static_cast<std::size_t>(in_block) * row, t, n});
    t += n;
  }
  return spans;
}

// The checks every batch call makes before it changes anything: n within [0, max_tokens] and no
// sequence listed twice (a batch names each of its sequences once). `what` names the call.
inline void check_batch(const char* what, std::span<const SeqId> seqs, std::int64_t n_tokens,
                        std::int64_t max_tokens) {
  if (n_tokens < 0 || n_tokens > max_tokens) {
    fail("kvstore: ", what, " of ", n_tokens, " tokens (expected 0..", max_tokens, ")");
  }
  std::vector<SeqId> sorted(seqs.begin(), seqs.end());
  std::sort(sorted.begin(), sorted.end());
  if (const auto twice = std::adjacent_find(sorted.begin(), sorted.end()); twice != sorted.end()) {
    fail("kvstore: ", what, " lists sequence ", *twice, " twice");
  }
}

}  // namespace kvpr::kvstore
