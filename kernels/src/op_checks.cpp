// See op_checks.h. Each check throws the first problem it finds as one line: the op, the argument
// and its shape, in the words of the formula in backend.h.
#include "kvpr/kernels/op_checks.h"

#include <limits>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::kernels {

std::string describe(const Tensor& t) {
  return str("[", t.rows, ", ", t.cols, "] ", safetensors_name(t.dtype));
}

void check_view(std::string_view op, std::string_view what, const Tensor& t) {
  if (t.rows < 0 || t.cols < 0) fail(op, ": ", what, " has a negative shape ", describe(t));
  if (t.data == nullptr && t.numel() != 0) fail(op, ": ", what, " ", describe(t), " has no data");
}

void check_dtype(std::string_view op, std::string_view what, const Tensor& t, DType dtype) {
  check_view(op, what, t);
  if (t.dtype != dtype) {
    fail(op, ": ", what, " ", describe(t), " is not ", safetensors_name(dtype),
         " (the backend computes in ", safetensors_name(dtype), ")");
  }
}

void check_vector(std::string_view op, std::string_view what, const Tensor& t, std::int64_t n,
                  DType dtype) {
  check_dtype(op, what, t, dtype);
  if (t.numel() != n || (t.rows != 1 && t.cols != 1)) {
    fail(op, ": ", what, " ", describe(t), " is not a vector of ", n, " elements");
  }
}

void check_same_shape(std::string_view op, std::string_view what_a, const Tensor& a,
                      std::string_view what_b, const Tensor& b) {
  if (a.rows != b.rows || a.cols != b.cols) {
    fail(op, ": ", what_a, " ", describe(a), " and ", what_b, " ", describe(b), " differ in shape");
  }
}

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto* a0 = static_cast<const char*>(a.data);
  const auto* b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

void check_dims_fit(std::string_view op,
                    std::initializer_list<std::pair<std::string_view, std::int64_t>> dims,
                    std::int64_t max, std::string_view limit) {
  for (const auto& [what, value] : dims) {
    if (value > max)
      raise(ErrorKind::unimplemented, op, ": ", what, " = ", value, " exceeds ", limit);
  }
}

namespace {

void check_host_pointer(std::string_view op, const void* p, const Tensor& t) {
  if (p == nullptr && t.numel() != 0) fail(op, ": the host pointer for ", describe(t), " is null");
}

}  // namespace

void check_copy_to_device(const Tensor& dst, const void* src) {
  check_view("copy_to_device", "dst", dst);
  check_host_pointer("copy_to_device", src, dst);
}

void check_copy_to_host(const void* dst, const Tensor& src) {
  check_view("copy_to_host", "src", src);
  check_host_pointer("copy_to_host", dst, src);
}

void check_copy_device(const Tensor& dst, const Tensor& src) {
  check_view("copy_device", "dst", dst);
  check_view("copy_device", "src", src);
  if (dst.numel() != src.numel()) {
    fail("copy_device: src ", describe(src), " and dst ", describe(dst),
         " differ in element count");
  }
  if (overlaps(dst, src) && !(dst.data == src.data && dst.dtype == src.dtype)) {
    fail("copy_device: src ", describe(src), " and dst ", describe(dst), " overlap");
  }
}

void check_gemm(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y,
                DType dtype) {
  constexpr std::string_view kOp = "gemm";
  check_dtype(kOp, "x", x, dtype);
  check_dtype(kOp, "w", w, dtype);
  check_dtype(kOp, "y", y, dtype);
  if (w.cols != x.cols || y.rows != x.rows || y.cols != w.rows) {
    fail(kOp, ": x ", describe(x), " · w ", describe(w), "ᵀ does not give y ", describe(y));
  }
  if (bias != nullptr) check_vector(kOp, "bias", *bias, w.rows, dtype);
  if (overlaps(y, x) || overlaps(y, w) || (bias != nullptr && overlaps(y, *bias))) {
    fail(kOp, ": y ", describe(y), " overlaps an input");
  }
}

void check_binary(std::string_view op, const Tensor& a, const Tensor& b, const Tensor& y,
                  DType dtype) {
  check_dtype(op, "a", a, dtype);
  check_dtype(op, "b", b, dtype);
  check_dtype(op, "y", y, dtype);
  check_same_shape(op, "a", a, "b", b);
  check_same_shape(op, "a", a, "y", y);
}

void check_activation(Act act, const Tensor& x, DType dtype) {
  check_dtype("activation", "x", x, dtype);
  if (act != Act::relu && act != Act::gelu && act != Act::silu) {
    fail("activation: unknown activation ", static_cast<int>(act));
  }
}

void check_layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& y,
                      DType dtype) {
  constexpr std::string_view kOp = "layer_norm";
  check_dtype(kOp, "x", x, dtype);
  check_dtype(kOp, "y", y, dtype);
  check_same_shape(kOp, "x", x, "y", y);
  check_vector(kOp, "weight", weight, x.cols, dtype);
  check_vector(kOp, "bias", bias, x.cols, dtype);
}

void check_rms_norm(const Tensor& x, const Tensor& weight, const Tensor& y, DType dtype) {
  constexpr std::string_view kOp = "rms_norm";
  check_dtype(kOp, "x", x, dtype);
  check_dtype(kOp, "y", y, dtype);
  check_same_shape(kOp, "x", x, "y", y);
  check_vector(kOp, "weight", weight, x.cols, dtype);
}

void check_rope(const Tensor& x, std::span<const std::int32_t> positions, std::int64_t n_heads,
                std::int64_t head_dim, float theta, DType dtype) {
  constexpr std::string_view kOp = "rope";
  check_dtype(kOp, "x", x, dtype);
  if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    fail(kOp, ": n_heads ", n_heads, " × head_dim ", head_dim,
         " is not a positive count of even-width heads");
  }
  if (x.cols != n_heads * head_dim) {
    fail(kOp, ": x ", describe(x), " is not [rows, n_heads ", n_heads, " × head_dim ", head_dim,
         "]");
  }
  if (static_cast<std::int64_t>(positions.size()) != x.rows) {
    fail(kOp, ": ", positions.size(), " positions for x ", describe(x));
  }
  if (!(theta > 0.0f)) fail(kOp, ": theta ", theta, " is not positive");
  for (std::size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] < 0) fail(kOp, ": position ", positions[i], " of row ", i, " is negative");
  }
}

void check_embedding(const Tensor& table, std::span<const std::int32_t> ids, const Tensor& y,
                     DType dtype) {
  constexpr std::string_view kOp = "embedding";
  check_dtype(kOp, "table", table, dtype);
  check_dtype(kOp, "y", y, dtype);
  if (y.rows != static_cast<std::int64_t>(ids.size()) || y.cols != table.cols) {
    fail(kOp, ": ", ids.size(), " ids from table ", describe(table), " do not fill y ",
         describe(y));
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows) {
      fail(kOp, ": id ", ids[i], " (position ", i, ") is out of the table's ", table.rows, " rows");
    }
  }
}

namespace {

void check_attn_shape(std::string_view op, const AttnShape& shape) {
  if (shape.n_heads <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0 ||
      shape.n_heads % shape.n_kv_heads != 0) {
    fail(op, ": n_heads ", shape.n_heads, ", n_kv_heads ", shape.n_kv_heads, ", head_dim ",
         shape.head_dim, " is not a valid grouped-query shape");
  }
}

void check_attn_stats(std::string_view op, const Tensor& stats, std::int64_t rows,
                      const AttnShape& shape) {
  check_dtype(op, "stats", stats, DType::f32);
  if (stats.rows != rows || stats.cols != 2 * shape.n_heads) {
    fail(op, ": stats ", describe(stats), " is not [", rows, ", 2 × n_heads ", shape.n_heads, "]");
  }
}

}  // namespace

void check_attention(const Tensor& q, std::span<const AttnSegment> segments, const AttnShape& shape,
                     const Tensor& out, DType dtype, const Tensor* stats) {
  constexpr std::string_view kOp = "attention";
  check_dtype(kOp, "q", q, dtype);
  check_dtype(kOp, "out", out, dtype);
  check_attn_shape(kOp, shape);
  if (q.cols != shape.n_heads * shape.head_dim) {
    fail(kOp, ": q ", describe(q), " is not [rows, n_heads ", shape.n_heads, " × head_dim ",
         shape.head_dim, "]");
  }
  check_same_shape(kOp, "q", q, "out", out);
  if (stats) {
    check_attn_stats(kOp, *stats, q.rows, shape);
    if (overlaps(*stats, q) || overlaps(*stats, out)) {
      fail(kOp, ": stats ", describe(*stats), " overlaps q or out");
    }
  }
  const std::int64_t n_queries = q.rows;
  const std::int64_t h_kv = shape.n_kv_heads * shape.head_dim;
  std::vector<bool> has_keys(static_cast<std::size_t>(n_queries), false);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const AttnSegment& seg = segments[i];
    if (seg.query < 0 || seg.query >= n_queries) {
      fail(kOp, ": segment ", i, " names query ", seg.query, " of ", n_queries);
    }
    check_dtype(kOp, str("segment ", i, " k"), seg.k, dtype);
    check_dtype(kOp, str("segment ", i, " v"), seg.v, dtype);
    if (seg.k.cols != h_kv || seg.v.cols != h_kv || seg.k.rows != seg.v.rows) {
      fail(kOp, ": segment ", i, " k ", describe(seg.k), " and v ", describe(seg.v),
           " are not both [n, h_kv ", h_kv, "]");
    }
    if (seg.k.rows > 0) has_keys[static_cast<std::size_t>(seg.query)] = true;
  }
  for (std::size_t r = 0; r < has_keys.size(); ++r) {
    if (!has_keys[r]) fail(kOp, ": query row ", r, " has no keys (no non-empty segment)");
  }
}

void check_attention_merge(const Tensor& out, const Tensor& stats, const Tensor& partials,
                           const AttnShape& shape, DType dtype) {
  constexpr std::string_view kOp = "attention_merge";
  check_dtype(kOp, "out", out, dtype);
  check_attn_shape(kOp, shape);
  if (out.cols != shape.n_heads * shape.head_dim) {
    fail(kOp, ": out ", describe(out), " is not [rows, n_heads ", shape.n_heads, " × head_dim ",
         shape.head_dim, "]");
  }
  check_attn_stats(kOp, stats, out.rows, shape);
  check_dtype(kOp, "partials", partials, DType::f32);
  if (partials.rows != out.rows || partials.cols != shape.n_heads * (shape.head_dim + 2)) {
    fail(kOp, ": partials ", describe(partials), " is not [", out.rows, ", n_heads ", shape.n_heads,
         " × (head_dim ", shape.head_dim, " + 2)]");
  }
  if (overlaps(out, stats) || overlaps(out, partials) || overlaps(stats, partials)) {
    fail(kOp, ": out, stats and partials must not overlap");
  }
}

void check_argmax(const Tensor& x, DType dtype) {
  constexpr std::string_view kOp = "argmax";
  check_dtype(kOp, "x", x, dtype);
  if (x.cols == 0 && x.rows > 0) fail(kOp, ": x ", describe(x), " has rows of no elements");
  if (x.cols > std::numeric_limits<std::int32_t>::max()) {
    fail(kOp, ": x ", describe(x), " has more columns than an int32 index can name");
  }
}

void check_sample(const Tensor& logits, std::span<const RowSampling> rows, DType dtype) {
  constexpr std::string_view kOp = "sample";
  check_argmax(logits, dtype);
  if (static_cast<std::size_t>(logits.rows) != rows.size()) {
    fail(kOp, ": logits ", describe(logits), " for ", rows.size(), " rows of sampling numbers");
  }
  if (logits.cols > kMaxSampleVocab) {
    fail(kOp, ": a vocabulary of ", logits.cols, " tokens is over the op's ", kMaxSampleVocab);
  }
  for (const RowSampling& p : rows) check_row_sampling(p, logits.cols);
}

}  // namespace kvpr::kernels
