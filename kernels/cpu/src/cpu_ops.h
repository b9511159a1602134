// The CPU backend's ops as free functions over tensor views: the numerical reference of kvpr.
// Private to kernels/cpu. They are called only through Backend's checking front (op_checks.h), so
// their arguments are valid (dtype f32, shapes, index ranges); gemm adds the BLAS integer range
// before touching any output. They run on the calling thread (the compute queue) and keep no state
// between calls; gemm uses OpenBLAS, whose thread count is process-wide.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cpu {

// --- ops (semantics in backend.h) ---
void gemm(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y);
void add(const Tensor& a, const Tensor& b, const Tensor& y);
void mul(const Tensor& a, const Tensor& b, const Tensor& y);
void activation(Act act, const Tensor& x);
void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                const Tensor& y);
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y);
void rope(const Tensor& x, std::span<const std::int32_t> positions, std::int64_t n_heads,
          std::int64_t head_dim, float theta);
void embedding(const Tensor& table, std::span<const std::int32_t> ids, const Tensor& y);
std::vector<std::int32_t> argmax(const Tensor& x);
// In cpu_attention.cpp.
// `stats`, when given, receives each (row, head)'s (max score, sum of exp) (backend.h).
void attention(const Tensor& q, std::span<const AttnSegment> segments, const AttnShape& shape,
               const Tensor& out, const Tensor* stats);
void attention_merge(const Tensor& out, const Tensor& stats, const Tensor& partials,
                     const AttnShape& shape);

}  // namespace kvpr::kernels::cpu
