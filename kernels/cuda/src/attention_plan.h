// The host half of the CUDA attention op: refuses what the kernel cannot do (the arguments
// themselves were checked by Backend's front, op_checks.h), groups the K,V segments by query row
// (keeping their order, a stable counting sort), and decides how many token splits each (query,
// head) gets. The result is packed into one byte blob, uploaded once per call and read by
// attention.cu. Pure host C++ (no CUDA calls), so it is unit-tested on machines without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cuda {

// One segment as the kernel reads it. Trivially copyable; 24 bytes.
struct AttnSegDesc {
  const void* k = nullptr;  // [n_tokens, h_kv] in the compute dtype
  const void* v = nullptr;
  std::int64_t n_tokens = 0;
};

struct AttnPlan {
  std::vector<AttnSegDesc> segs;  // grouped by query row, in the order given per row
  std::vector<std::int64_t>
      query_first;                // segs[query_first[r] .. query_first[r+1]) belong to row r
  std::int64_t max_tokens = 0;    // longest row, in tokens
  std::int64_t n_splits = 1;      // token ranges per (row, head), combined afterwards
  std::int64_t split_tokens = 0;  // tokens per split (the last split may hold fewer)
  // Byte offset of query_first inside the packed blob (after segs, 8-byte aligned).
  std::size_t query_first_offset() const { return segs.size() * sizeof(AttnSegDesc); }
  // segs then query_first, as one blob for a single upload.
  std::vector<std::byte> pack() const;
};

constexpr std::int64_t kAttnMaxHeadDim = 256;  // 8 elements per lane of a warp
constexpr std::int64_t kAttnMaxSplits = 128;
constexpr std::int64_t kAttnMinSplitTokens = 128;

// Builds the plan for arguments that passed check_attention (op_checks.h); throws
// ErrorKind::unimplemented, in one line, for a shape beyond the kernel's limits (head_dim, n_heads,
// rows of the grid). `sm_count` sizes the split: rows·heads blocks that do not fill ~8 blocks per
// SM are split along the tokens.
AttnPlan plan_attention(const Tensor& q, std::span<const AttnSegment> segments,
                        const AttnShape& shape, int sm_count);

}  // namespace kvpr::kernels::cuda
