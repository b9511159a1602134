// Elementwise ops, norms, RoPE, embedding, argmax and GEMM of the CPU backend (attention has its
// own file). These are the reference the CUDA backend and the golden tests are compared against, so
// each follows the formula of the framework the checkpoints come from (PyTorch / Hugging Face) in
// its order of float operations; sums that set a whole row's scale (means, variances) are taken
// in double, which only moves results closer to the exact value.
#include "cpu_ops.h"

#include <cblas.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

#include "kvpr/common/error.h"
#include "kvpr/kernels/op_checks.h"

namespace kvpr::kernels::cpu {
namespace {

const float* in(const Tensor& t) {
  return static_cast<const float*>(t.data);
}
float* out(const Tensor& t) {
  return static_cast<float*>(t.data);
}

template <typename F>
void elementwise(const Tensor& a, const Tensor& b, const Tensor& y, F f) {
  const float* pa = in(a);
  const float* pb = in(b);
  float* py = out(y);  // may alias pa or pb exactly: each element is read before it is written
  const std::int64_t n = a.numel();
  for (std::int64_t i = 0; i < n; ++i) py[i] = f(pa[i], pb[i]);
}

}  // namespace

void gemm(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y) {
  const std::int64_t m = x.rows;
  const std::int64_t k = x.cols;
  const std::int64_t n = w.rows;
  check_dims_fit("gemm", {{"m", m}, {"n", n}, {"k", k}}, std::numeric_limits<blasint>::max(),
                 "the BLAS integer range");
  if (m == 0 || n == 0) return;
  float* py = out(y);
  for (std::int64_t i = 0; i < m; ++i) {
    if (bias != nullptr) {
      std::memcpy(py + i * n, in(*bias), static_cast<std::size_t>(n) * sizeof(float));
    } else {
      std::memset(py + i * n, 0, static_cast<std::size_t>(n) * sizeof(float));
    }
  }
  if (k == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, in(x),
              static_cast<blasint>(k), in(w), static_cast<blasint>(k), 1.0f, py,
              static_cast<blasint>(n));
}

void add(const Tensor& a, const Tensor& b, const Tensor& y) {
  elementwise(a, b, y, [](float u, float v) { return u + v; });
}

void mul(const Tensor& a, const Tensor& b, const Tensor& y) {
  elementwise(a, b, y, [](float u, float v) { return u * v; });
}

void activation(Act act, const Tensor& x) {
  float* p = out(x);
  const std::int64_t n = x.numel();
  switch (act) {
    case Act::relu:
      for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] > 0.0f ? p[i] : 0.0f;
      return;
    case Act::gelu: {  // torch.nn.functional.gelu(approximate="none")
      constexpr float kInvSqrt2 = 0.70710678118654752440f;
      for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] * 0.5f * (1.0f + std::erf(p[i] * kInvSqrt2));
      return;
    }
    case Act::silu:  // x · sigmoid(x); exp(-x) = inf for very negative x gives -0, as in torch
      for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] / (1.0f + std::exp(-p[i]));
      return;
  }
  fail("activation: unknown activation ", static_cast<int>(act));  // refused by the checker
}

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                const Tensor& y) {
  const std::int64_t n = x.cols;
  if (n == 0) return;
  const float* pw = in(weight);
  const float* pb = in(bias);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const float* px = in(x) + r * n;
    float* py = out(y) + r * n;  // may alias px: the row is read twice before it is written
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += px[i];
    const double mean = sum / static_cast<double>(n);
    double sq = 0;
    for (std::int64_t i = 0; i < n; ++i) sq += (px[i] - mean) * (px[i] - mean);
    const double var = sq / static_cast<double>(n);  // biased, as torch.nn.LayerNorm
    const auto mean_f = static_cast<float>(mean);
    const auto rstd_f = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
    for (std::int64_t i = 0; i < n; ++i) py[i] = (px[i] - mean_f) * rstd_f * pw[i] + pb[i];
  }
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) {
  const std::int64_t n = x.cols;
  if (n == 0) return;
  const float* pw = in(weight);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const float* px = in(x) + r * n;
    float* py = out(y) + r * n;  // may alias px
    double sq = 0;
    for (std::int64_t i = 0; i < n; ++i) sq += static_cast<double>(px[i]) * px[i];
    // LlamaRMSNorm: variance = mean(x²) in fp32; x · rsqrt(variance + eps); weight · that.
    const auto variance = static_cast<float>(sq / static_cast<double>(n));
    const float rstd = 1.0f / std::sqrt(variance + eps);
    for (std::int64_t i = 0; i < n; ++i) py[i] = pw[i] * (px[i] * rstd);
  }
}

void rope(const Tensor& x, std::span<const std::int32_t> positions, std::int64_t n_heads,
          std::int64_t head_dim, float theta) {
  const std::int64_t half = head_dim / 2;
  // Hugging Face: inv_freq = 1 / theta^(arange(0, d, 2) / d), all in float32.
  std::vector<float> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[static_cast<std::size_t>(i)] = 1.0f / std::pow(theta, exponent);
  }
  std::vector<float> cos_sin(static_cast<std::size_t>(2 * half));
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const auto pos = static_cast<float>(positions[static_cast<std::size_t>(r)]);
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[static_cast<std::size_t>(i)];
      cos_sin[static_cast<std::size_t>(i)] = std::cos(angle);
      cos_sin[static_cast<std::size_t>(half + i)] = std::sin(angle);
    }
    const float* c = cos_sin.data();
    const float* s = cos_sin.data() + half;
    for (std::int64_t h = 0; h < n_heads; ++h) {
      float* lo = out(x) + r * x.cols + h * head_dim;
      float* hi = lo + half;
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = lo[i];
        const float b = hi[i];
        lo[i] = a * c[i] - b * s[i];
        hi[i] = b * c[i] + a * s[i];
      }
    }
  }
}

void embedding(const Tensor& table, std::span<const std::int32_t> ids, const Tensor& y) {
  const auto row_bytes = static_cast<std::size_t>(table.cols) * sizeof(float);
  if (row_bytes == 0) return;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    std::memmove(out(y) + static_cast<std::int64_t>(i) * y.cols, in(table) + ids[i] * table.cols,
                 row_bytes);
  }
}

std::vector<std::int32_t> argmax(const Tensor& x) {
  std::vector<std::int32_t> result(static_cast<std::size_t>(x.rows));
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const float* p = in(x) + r * x.cols;
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < x.cols; ++i) {
      if (p[i] > p[best]) best = i;  // strict: the first of equal maxima wins
    }
    result[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(best);
  }
  return result;
}

}  // namespace kvpr::kernels::cpu
