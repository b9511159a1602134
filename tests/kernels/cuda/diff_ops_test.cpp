// Differential test of the CUDA backend's ops against the CPU reference: the same random inputs
// (rounded to the CUDA compute dtype, so both backends see identical numbers) through every op on
// both backends, compared elementwise. Parametrised by the CUDA compute dtype: fp32 must agree to
// ~1e-5 (reassociation only: cuBLAS without TF32, fp32 kernels), fp16/bf16 to their rounding.
// Without a usable CUDA device every case skips and says why.
#include <algorithm>
#include <numeric>

#include "cuda_test_util.h"

namespace kvpr::kernels {
namespace {

using cuda_test::expect_close;
using cuda_test::Pair;
using cuda_test::random_values;
using cuda_test::round_to;
using cuda_test::tol_for;

class CudaOps : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    KVPR_SKIP_WITHOUT_CUDA();
    pair_ = std::make_unique<Pair>(GetParam());
  }
  // Random values already rounded to the compute dtype.
  std::vector<float> values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
    auto v = random_values(n, seed, scale);
    round_to(GetParam(), v);
    return v;
  }
  std::unique_ptr<Pair> pair_;
};

TEST_P(CudaOps, Gemm) {
  struct Shape {
    std::int64_t m, n, k;
    bool bias;
  };
  for (const Shape& s :
       {Shape{1, 64, 48, true}, Shape{7, 130, 256, false}, Shape{33, 512, 1024, true},
        Shape{128, 96, 64, true}, Shape{5, 17, 0, true}}) {
    SCOPED_TRACE(::testing::Message() << "m " << s.m << " n " << s.n << " k " << s.k);
    const auto x = values(static_cast<std::size_t>(s.m * s.k), 1);
    const auto w = values(static_cast<std::size_t>(s.n * s.k), 2, 0.05f);
    const auto b = values(static_cast<std::size_t>(s.n), 3);
    std::vector<float> out[2];
    int i = 0;
    for (auto* side : {&pair_->cpu, &pair_->cuda}) {
      const Tensor tb = side->put(b, 1, s.n);
      const Tensor ty = side->alloc(s.m, s.n);
      side->backend->gemm(side->put(x, s.m, s.k), side->put(w, s.n, s.k), s.bias ? &tb : nullptr,
                          ty);
      out[i++] = side->get(ty);
    }
    const auto t = tol_for(GetParam(), 2e-5f);
    expect_close(out[1], out[0], t.atol, t.rtol, "gemm");
  }
}

TEST_P(CudaOps, AddMulAndActivations) {
  const std::int64_t rows = 9, cols = 1000;
  const auto a = values(rows * cols, 4, 3.0f);
  const auto b = values(rows * cols, 5);
  for (int op = 0; op < 5; ++op) {
    SCOPED_TRACE(op);
    std::vector<float> out[2];
    int i = 0;
    for (auto* side : {&pair_->cpu, &pair_->cuda}) {
      const Tensor ta = side->put(a, rows, cols);
      const Tensor tb = side->put(b, rows, cols);
      switch (op) {
        case 0:
          side->backend->add(ta, tb, ta);
          break;  // y aliases a
        case 1:
          side->backend->mul(ta, tb, tb);
          break;  // y aliases b
        case 2:
          side->backend->activation(Act::relu, ta);
          break;
        case 3:
          side->backend->activation(Act::gelu, ta);
          break;
        case 4:
          side->backend->activation(Act::silu, ta);
          break;
      }
      out[i++] = side->get(op == 1 ? tb : ta);
    }
    const auto t = tol_for(GetParam(), 1e-6f);
    expect_close(out[1], out[0], t.atol, t.rtol, "elementwise");
  }
}

TEST_P(CudaOps, LayerNormAndRmsNorm) {
  for (std::int64_t cols : {std::int64_t{64}, std::int64_t{4096}, std::int64_t{1000}}) {
    SCOPED_TRACE(cols);
    const std::int64_t rows = 6;
    const auto x = values(static_cast<std::size_t>(rows * cols), 6, 2.0f);
    auto w = values(static_cast<std::size_t>(cols), 7, 0.2f);
    for (auto& v : w) v += 1.0f;
    round_to(GetParam(), w);
    const auto b = values(static_cast<std::size_t>(cols), 8, 0.2f);
    for (int op = 0; op < 3; ++op) {
      std::vector<float> out[2];
      int i = 0;
      for (auto* side : {&pair_->cpu, &pair_->cuda}) {
        const Tensor tx = side->put(x, rows, cols);
        const Tensor tw = side->put(w, 1, cols);
        const Tensor tb = side->put(b, cols, 1);
        const Tensor ty = side->alloc(rows, cols);
        if (op == 0) side->backend->layer_norm(tx, tw, tb, 1e-5f, ty);
        if (op == 1) side->backend->rms_norm(tx, tw, 1e-6f, ty);
        if (op == 2) side->backend->layer_norm(tx, tw, tb, 1e-5f, tx);  // in place
        out[i++] = side->get(op == 2 ? tx : ty);
      }
      const auto t = tol_for(GetParam(), 2e-6f);
      expect_close(out[1], out[0], t.atol, t.rtol, op == 1 ? "rms_norm" : "layer_norm");
    }
  }
}

TEST_P(CudaOps, RopeAtLongPositions) {
  for (auto [n_heads, head_dim] :
       {std::pair<std::int64_t, std::int64_t>{4, 16}, {8, 128}, {2, 256}}) {
    SCOPED_TRACE(head_dim);
    const std::int64_t rows = 37;
    const auto x = values(static_cast<std::size_t>(rows * n_heads * head_dim), 9);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(rows));
    for (std::size_t i = 0; i < positions.size(); ++i)
      positions[i] = static_cast<std::int32_t>((i * 977) % 32768);
    std::vector<float> out[2];
    int i = 0;
    for (auto* side : {&pair_->cpu, &pair_->cuda}) {
      const Tensor tx = side->put(x, rows, n_heads * head_dim);
      side->backend->rope(tx, positions, n_heads, head_dim, 10000.0f);
      out[i++] = side->get(tx);
    }
    // Same angles (host-computed frequencies); cosf/sinf differ from glibc by an ulp at most.
    const auto t = tol_for(GetParam(), 1e-5f);
    expect_close(out[1], out[0], t.atol, t.rtol, "rope");
  }
}

TEST_P(CudaOps, EmbeddingGather) {
  const std::int64_t vocab = 300, cols = 96;
  const auto table = values(static_cast<std::size_t>(vocab * cols), 10);
  const std::vector<std::int32_t> ids = {0, 299, 5, 5, 17, 250};
  std::vector<float> out[2];
  int i = 0;
  for (auto* side : {&pair_->cpu, &pair_->cuda}) {
    const Tensor ty = side->alloc(static_cast<std::int64_t>(ids.size()), cols);
    side->backend->embedding(side->put(table, vocab, cols), ids, ty);
    out[i++] = side->get(ty);
  }
  expect_close(out[1], out[0], 0, 0, "embedding");  // a gather is exact
  const std::vector<std::int32_t> bad = {3, 300};
  EXPECT_THROW(pair_->cuda.backend->embedding(pair_->cuda.put(table, vocab, cols), bad,
                                              pair_->cuda.alloc(2, cols)),
               Error);
}

TEST_P(CudaOps, ArgmaxTakesTheFirstOfEqualMaxima) {
  const std::int64_t rows = 5, cols = 50272;
  auto x = values(static_cast<std::size_t>(rows * cols), 11);
  // Row 1: the maximum appears three times; row 3: only at the end; row 4: all equal.
  for (std::int64_t c : {std::int64_t{40000}, std::int64_t{7}, std::int64_t{20000}})
    x[static_cast<std::size_t>(cols + c)] = 64.0f;
  x[static_cast<std::size_t>(3 * cols + cols - 1)] = 64.0f;
  std::fill(x.begin() + 4 * cols, x.end(), 1.0f);
  std::vector<std::int32_t> out[2];
  int i = 0;
  for (auto* side : {&pair_->cpu, &pair_->cuda})
    out[i++] = side->backend->argmax(side->put(x, rows, cols));
  EXPECT_EQ(out[1], out[0]);
  EXPECT_EQ(out[1][1], 7);
  EXPECT_EQ(out[1][3], cols - 1);
  EXPECT_EQ(out[1][4], 0);
}

TEST_P(CudaOps, RejectsTensorsOfAnotherDtype) {
  const DType other = GetParam() == DType::f32 ? DType::f16 : DType::f32;
  auto buffer = pair_->cuda.backend->alloc(64 * 64 * 4);
  const Tensor t = buffer->tensor(other, 8, 8);
  try {
    pair_->cuda.backend->add(t, t, t);
    FAIL() << "add on the wrong dtype succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add: a"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         cuda_test::dtype_name);

}  // namespace
}  // namespace kvpr::kernels
