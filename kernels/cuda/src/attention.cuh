// Launcher of decode/prefill attention over K,V segments (attention.cu). The host half —
// checks, grouping segments by query, choosing the token split — is attention_plan.h; this takes
// the uploaded plan. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention_plan.h"
#include "kvpr/common/dtype.h"

namespace kvpr::kernels::cuda {

struct AttnArgs {
  const void* q = nullptr;                    // [n_queries, n_heads·head_dim]
  void* out = nullptr;                        // same shape; may alias q
  const AttnSegDesc* segs = nullptr;          // device copy of AttnPlan::segs
  const std::int64_t* query_first = nullptr;  // device copy of AttnPlan::query_first
  float* partial_acc = nullptr;  // [n_queries·n_heads·n_splits, head_dim] when n_splits > 1
  float* partial_ml = nullptr;   // [n_queries·n_heads·n_splits, 2]: running max and sum
  std::int64_t n_queries = 0;
  std::int64_t n_heads = 0;
  std::int64_t group = 1;  // n_heads / n_kv_heads
  std::int64_t head_dim = 0;
  std::int64_t n_splits = 1;
  std::int64_t split_tokens = 0;
  float scale = 1.0f;
  float* stats = nullptr;  // [n_queries, 2·n_heads]: each (row, head)'s max and sum, when wanted
};

// Bytes of the partial buffers a plan needs (0 when it has one split).
std::size_t attention_partial_bytes(const AttnArgs& args);
// partial_ml starts this many bytes into the partial buffer.
std::size_t attention_partial_ml_offset(const AttnArgs& args);

void launch_attention(cudaStream_t stream, DType dtype, const AttnArgs& args);

// out [rows, n_heads·head_dim] (dtype) ← log-sum-exp merge of out (with stats [rows, 2·n_heads])
// and partials [rows, n_heads·(head_dim + 2)] (per head: max, sum, normalised output); a partial
// of sum 0 leaves its head as it is (backend.h, attention_merge).
void launch_attention_merge(cudaStream_t stream, DType dtype, void* out, const float* stats,
                            const float* partials, std::int64_t rows, std::int64_t n_heads,
                            std::int64_t head_dim);

}  // namespace kvpr::kernels::cuda
