// See cuda_checks.h.
#include "cuda_checks.h"

#include <limits>

#include "kvpr/common/error.h"

namespace kvpr::kernels::cuda {

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
         " (this CUDA backend computes in ", safetensors_name(dtype), ")");
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

void check_grid_rows(std::string_view op, std::string_view what, std::int64_t rows) {
  if (rows > std::numeric_limits<std::int32_t>::max()) {
    raise(ErrorKind::unimplemented, op, ": ", what, " has ", rows,
          " rows, more than one CUDA grid dimension holds");
  }
}

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto* a0 = static_cast<const char*>(a.data);
  const auto* b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

}  // namespace kvpr::kernels::cuda
