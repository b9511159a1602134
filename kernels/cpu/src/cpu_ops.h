// The CPU backend's ops as free functions over tensor views: the numerical reference of kvpr.
// Private to kernels/cpu. Each op validates every argument first (dtype f32, shapes, index ranges)
// and throws one Error line naming the op and the offending shapes before touching any output, so
// a rejected call leaves memory as it was. They run on the calling thread (the compute queue) and
// keep no state between calls; gemm uses OpenBLAS, whose thread count is process-wide.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cpu {

// --- argument checks shared by the ops, the attention kernel and the backend's copies ---
// "[rows, cols] F32", as messages print a tensor.
std::string describe(const Tensor& t);
// Non-negative shape, and data present unless empty. `what` names the argument in messages.
void check_view(std::string_view op, std::string_view what, const Tensor& t);
// check_view plus dtype f32.
void check_f32(std::string_view op, std::string_view what, const Tensor& t);
// A per-column vector (bias, norm weight): any [1, n] / [n, 1] view of n elements.
void check_vector(std::string_view op, std::string_view what, const Tensor& t, std::int64_t n);
void check_same_shape(std::string_view op, std::string_view what_a, const Tensor& a,
                      std::string_view what_b, const Tensor& b);

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
void attention(const Tensor& q, std::span<const AttnSegment> segments, const AttnShape& shape,
               const Tensor& out);

}  // namespace kvpr::kernels::cpu
