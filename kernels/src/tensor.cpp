// The non-virtual helpers of the backend interface's value types (backend.h). They only compute
// views, so they live here once for every backend; each checks its bounds and throws a one-line
// Error naming the bad value, because a wrong view would otherwise corrupt device memory silently.
#include <limits>

#include "kvpr/common/error.h"
#include "kvpr/kernels/backend.h"

namespace kvpr::kernels {
namespace {

// rows·cols with both non-negative, or -1 when the product overflows int64.
std::int64_t checked_numel(std::int64_t rows, std::int64_t cols) {
  if (cols != 0 && rows > std::numeric_limits<std::int64_t>::max() / cols) return -1;
  return rows * cols;
}

}  // namespace

Tensor Tensor::rows_slice(std::int64_t r0, std::int64_t n) const {
  if (r0 < 0 || n < 0 || r0 > rows || n > rows - r0) {
    fail("Tensor::rows_slice: rows [", r0, ", ", r0 + n, ") out of a tensor of ", rows, " rows");
  }
  Tensor t = *this;
  t.rows = n;
  if (data != nullptr) {
    t.data = static_cast<char*>(data) +
             static_cast<std::size_t>(r0) * static_cast<std::size_t>(cols) * size_of(dtype);
  }
  return t;
}

Tensor Tensor::reshaped(std::int64_t new_rows, std::int64_t new_cols) const {
  if (new_rows < 0 || new_cols < 0 || checked_numel(new_rows, new_cols) != numel()) {
    fail("Tensor::reshaped: [", rows, ", ", cols, "] cannot be seen as [", new_rows, ", ", new_cols,
         "]");
  }
  Tensor t = *this;
  t.rows = new_rows;
  t.cols = new_cols;
  return t;
}

Tensor DeviceBuffer::tensor(DType dtype, std::int64_t rows, std::int64_t cols) const {
  const std::int64_t n = rows < 0 || cols < 0 ? -1 : checked_numel(rows, cols);
  if (n < 0 || static_cast<std::uint64_t>(n) > bytes() / size_of(dtype)) {
    fail("DeviceBuffer::tensor: [", rows, ", ", cols, "] ", safetensors_name(dtype),
         " does not fit in a buffer of ", bytes(), " bytes");
  }
  return Tensor{data(), dtype, rows, cols};
}

}  // namespace kvpr::kernels
