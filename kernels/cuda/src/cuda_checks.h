// Argument checks of the CUDA backend's ops, run on the host before anything is enqueued, so that
// a rejected call throws one Error line naming the op and the offending shapes and leaves device
// memory as it was. They mirror the CPU backend's checks (kernels/cpu/src/cpu_ops.h), with the
// compute dtype in place of F32. Pure host C++.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cuda {

// "[rows, cols] F32", as messages print a tensor.
std::string describe(const Tensor& t);
// Non-negative shape, and data present unless empty.
void check_view(std::string_view op, std::string_view what, const Tensor& t);
// check_view plus the dtype the op computes in.
void check_dtype(std::string_view op, std::string_view what, const Tensor& t, DType dtype);
// A per-column vector (bias, norm weight): any [1, n] / [n, 1] view of n elements.
void check_vector(std::string_view op, std::string_view what, const Tensor& t, std::int64_t n,
                  DType dtype);
void check_same_shape(std::string_view op, std::string_view what_a, const Tensor& a,
                      std::string_view what_b, const Tensor& b);
// Row kernels launch one block per row: rows must fit the grid (2³¹ − 1).
void check_grid_rows(std::string_view op, std::string_view what, std::int64_t rows);
// Whether two views share any byte.
bool overlaps(const Tensor& a, const Tensor& b);

}  // namespace kvpr::kernels::cuda
