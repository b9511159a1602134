// The one argument checker of the backend interface: what makes an op's arguments valid, whatever
// backend runs it. Backend's public ops (backend.h) call these before the backend sees the call
// (ggml's way), so every backend rejects a bad call with the same one-line Error naming the op and
// the offending value, and leaves memory as it was. A backend checks only its own limits on top
// (BLAS or CUDA grid integer ranges), with ErrorKind::unimplemented.
//
// `dtype` is the backend's compute dtype: every tensor an op computes on must hold it. Pure host
// code: no device is touched, so these are tested on any machine.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "kvpr/kernels/backend.h"
#include "kvpr/kernels/row_sampling.h"

namespace kvpr::kernels {

// --- building blocks (also used by backends for their own limits) ---
// "[rows, cols] F32", as messages print a tensor.
std::string describe(const Tensor& t);
// Non-negative shape, and data present unless empty. `what` names the argument in messages.
void check_view(std::string_view op, std::string_view what, const Tensor& t);
// check_view plus the dtype the op computes in.
void check_dtype(std::string_view op, std::string_view what, const Tensor& t, DType dtype);
// A per-column vector (bias, norm weight): any [1, n] / [n, 1] view of n elements.
void check_vector(std::string_view op, std::string_view what, const Tensor& t, std::int64_t n,
                  DType dtype);
void check_same_shape(std::string_view op, std::string_view what_a, const Tensor& a,
                      std::string_view what_b, const Tensor& b);
// Whether two views share any byte.
bool overlaps(const Tensor& a, const Tensor& b);
// A backend's own limit on each named dimension: ErrorKind::unimplemented
// "op: what = value exceeds <limit>" for the first one above `max`.
void check_dims_fit(std::string_view op,
                    std::initializer_list<std::pair<std::string_view, std::int64_t>> dims,
                    std::int64_t max, std::string_view limit);

// --- one check per op of backend.h (same arguments, plus the compute dtype) ---
void check_copy_to_device(const Tensor& dst, const void* src);
void check_copy_to_host(const void* dst, const Tensor& src);
// Overlap is allowed only for a copy onto itself (same data and dtype), which does nothing.
void check_copy_device(const Tensor& dst, const Tensor& src);
void check_gemm(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y, DType dtype);
// add, mul: `op` names which.
void check_binary(std::string_view op, const Tensor& a, const Tensor& b, const Tensor& y,
                  DType dtype);
void check_activation(Act act, const Tensor& x, DType dtype);
void check_layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& y,
                      DType dtype);
void check_rms_norm(const Tensor& x, const Tensor& weight, const Tensor& y, DType dtype);
void check_rope(const Tensor& x, std::span<const std::int32_t> positions, std::int64_t n_heads,
                std::int64_t head_dim, float theta, DType dtype);
void check_embedding(const Tensor& table, std::span<const std::int32_t> ids, const Tensor& y,
                     DType dtype);
// Also: every segment names a query row of q, and every row has at least one key; stats, when
// given, is F32 [q.rows, 2·n_heads] and shares no byte with q or out.
void check_attention(const Tensor& q, std::span<const AttnSegment> segments, const AttnShape& shape,
                     const Tensor& out, DType dtype, const Tensor* stats = nullptr);
// out in the compute dtype [rows, n_heads·head_dim]; stats F32 [rows, 2·n_heads]; partials F32
// [rows, n_heads·(head_dim + 2)]; none overlapping.
void check_attention_merge(const Tensor& out, const Tensor& stats, const Tensor& partials,
                           const AttnShape& shape, DType dtype);
void check_argmax(const Tensor& x, DType dtype);
// logits in the compute dtype [rows.size(), vocab]; each row's numbers as check_row_sampling says.
void check_sample(const Tensor& logits, std::span<const RowSampling> rows, DType dtype);

}  // namespace kvpr::kernels
