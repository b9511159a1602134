// See attention_plan.h.
#include "attention_plan.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "kvpr/common/error.h"

namespace kvpr::kernels::cuda {
namespace {

constexpr std::string_view kOp = "attention";

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

std::vector<std::byte> AttnPlan::pack() const {
  std::vector<std::byte> blob(query_first_offset() + query_first.size() * sizeof(std::int64_t));
  if (!segs.empty()) std::memcpy(blob.data(), segs.data(), segs.size() * sizeof(AttnSegDesc));
  if (!query_first.empty()) {
    std::memcpy(blob.data() + query_first_offset(), query_first.data(),
                query_first.size() * sizeof(std::int64_t));
  }
  return blob;
}

AttnPlan plan_attention(const Tensor& q, std::span<const AttnSegment> segments,
                        const AttnShape& shape, int sm_count) {
  if (shape.head_dim > kAttnMaxHeadDim) {
    raise(ErrorKind::unimplemented, kOp, ": head_dim ", shape.head_dim,
          " exceeds the CUDA kernel's limit of ", kAttnMaxHeadDim);
  }
  if (shape.n_heads > 65535) {
    raise(ErrorKind::unimplemented, kOp, ": n_heads ", shape.n_heads,
          " exceeds the CUDA kernel's grid limit of 65535");
  }
  if (q.rows > std::numeric_limits<std::int32_t>::max()) {
    raise(ErrorKind::unimplemented, kOp, ": q has ", q.rows,
          " rows, more than one CUDA grid dimension holds");
  }
  const std::int64_t n_queries = q.rows;

  AttnPlan plan;
  plan.query_first.assign(static_cast<std::size_t>(n_queries) + 1, 0);
  std::vector<std::int64_t> n_tokens(static_cast<std::size_t>(n_queries), 0);
  for (const AttnSegment& seg : segments) {
    const auto row = static_cast<std::size_t>(seg.query);
    ++plan.query_first[row + 1];
    n_tokens[row] += seg.k.rows;
  }
  for (std::size_t r = 0; r < n_tokens.size(); ++r) {
    plan.query_first[r + 1] += plan.query_first[r];
    plan.max_tokens = std::max(plan.max_tokens, n_tokens[r]);
  }
  plan.segs.resize(segments.size());
  {
    std::vector<std::int64_t> next(plan.query_first.begin(), plan.query_first.end() - 1);
    for (const AttnSegment& seg : segments) {
      const auto slot = static_cast<std::size_t>(next[static_cast<std::size_t>(seg.query)]++);
      plan.segs[slot] = {seg.k.data, seg.v.data, seg.k.rows};
    }
  }

  // Split along the tokens only when rows × heads leave the device idle (decode with a small
  // batch); prefill-sized calls run one block per (row, head) and need no partial buffers.
  const std::int64_t blocks = n_queries * shape.n_heads;
  const std::int64_t target = 8 * static_cast<std::int64_t>(std::max(sm_count, 1));
  std::int64_t splits = blocks == 0 || blocks >= target ? 1 : ceil_div(target, blocks);
  splits =
      std::min(splits, std::max<std::int64_t>(1, ceil_div(plan.max_tokens, kAttnMinSplitTokens)));
  splits = std::min(splits, kAttnMaxSplits);
  plan.n_splits = splits;
  plan.split_tokens = std::max<std::int64_t>(1, ceil_div(plan.max_tokens, splits));
  return plan;
}

}  // namespace kvpr::kernels::cuda
