// Helpers shared by the CUDA backend's differential tests: whether a CUDA backend can be made
// here (and, if not, the one-line reason every test prints when it skips), and a pair of CPU and
// CUDA backends with upload/download helpers so each test reads as "same inputs, both backends,
// compare".
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kvpr/common/dtype.h"
#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace kvpr {
// Test names and messages print a DType as "F16", not as a byte dump.
inline void PrintTo(DType dtype, std::ostream* os) {
  *os << safetensors_name(dtype);
}
}  // namespace kvpr

namespace kvpr::kernels::cuda_test {

// tests/data, or $KVPR_TEST_DATA when set: the GPU tests also run from a bundle on another
// machine (tools/gpu-check), where the build tree's absolute path does not exist.
inline std::string test_data_dir() {
  const char* env = std::getenv("KVPR_TEST_DATA");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(KVPR_TEST_DATA);
}

// nullopt when a CUDA backend can be created here; otherwise why not (asked once per process).
inline const std::optional<std::string>& no_cuda_reason() {
  static const std::optional<std::string> reason = []() -> std::optional<std::string> {
    try {
      BackendOptions options;
      options.name = "cuda";
      make_backend(options);
      return std::nullopt;
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  }();
  return reason;
}

#define KVPR_SKIP_WITHOUT_CUDA()                                           \
  do {                                                                     \
    if (const auto& why = ::kvpr::kernels::cuda_test::no_cuda_reason()) {  \
      GTEST_SKIP() << "no usable CUDA device, GPU test not run: " << *why; \
    }                                                                      \
  } while (false)

// Rounds values to what `dtype` can hold, so both backends see identical inputs.
inline void round_to(DType dtype, std::vector<float>& v) {
  if (dtype == DType::f32) return;
  std::vector<std::uint16_t> bits(v.size());
  convert(v.data(), DType::f32, bits.data(), dtype, v.size());
  convert(bits.data(), dtype, v.data(), DType::f32, v.size());
}

inline std::vector<float> random_values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// One backend and the buffers a test allocated on it.
struct Side {
  std::unique_ptr<Backend> backend;
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;

  DType dtype() const { return backend->compute_dtype(); }
  Tensor alloc(std::int64_t rows, std::int64_t cols) {
    buffers.push_back(backend->alloc(
        static_cast<std::size_t>(std::max<std::int64_t>(rows * cols, 1)) * size_of(dtype())));
    return buffers.back()->tensor(dtype(), rows, cols);
  }
  // Synchronises: the copy reads `v` asynchronously (backend.h: host memory must stay valid until
  // the copy has run), and callers pass temporaries.
  Tensor put(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
    Tensor t = alloc(rows, cols);
    backend->copy_to_device(Queue::compute, t, v.data(), DType::f32);
    backend->synchronize();
    return t;
  }
  std::vector<float> get(const Tensor& t) {
    std::vector<float> out(static_cast<std::size_t>(t.numel()));
    backend->copy_to_host(Queue::compute, out.data(), DType::f32, t);
    backend->synchronize();
    return out;
  }
};

// The CPU reference (fp32) and a CUDA backend computing in `dtype`.
struct Pair {
  Side cpu;
  Side cuda;
  explicit Pair(DType dtype) {
    cpu.backend = make_backend({});
    BackendOptions options;
    options.name = "cuda";
    options.compute_dtype = dtype;
    cuda.backend = make_backend(options);
  }
};

// |a − b| ≤ atol + rtol·|b| everywhere; reports the worst element.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, float atol,
                         float rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t worst = 0;
  float worst_excess = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    float excess = std::abs(got[i] - want[i]) - (atol + rtol * std::abs(want[i]));
    if (std::isnan(excess)) excess = std::numeric_limits<float>::infinity();
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  EXPECT_LE(worst_excess, 0.0f) << what << ": element " << worst << " is " << got[worst]
                                << ", reference " << want[worst] << " (atol " << atol << ", rtol "
                                << rtol << ")";
}

// Tolerances for results stored in `dtype` after fp32 arithmetic on identical inputs.
struct Tol {
  float atol;
  float rtol;
};
inline Tol tol_for(DType dtype, float f32_tol = 1e-5f) {
  switch (dtype) {
    case DType::f32:
      return {f32_tol, f32_tol};
    case DType::f16:
      return {2e-3f, 2e-3f};
    case DType::bf16:
      return {1.6e-2f, 1.6e-2f};
  }
  return {0, 0};
}

inline std::string dtype_name(const ::testing::TestParamInfo<DType>& info) {
  return std::string(safetensors_name(info.param));
}

}  // namespace kvpr::kernels::cuda_test
