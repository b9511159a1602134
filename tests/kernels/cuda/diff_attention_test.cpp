// Differential test of attention over K,V segments, CPU reference vs CUDA: decode rows with the
// engine's three segments (recomputed, fetched, new token), grouped-query heads, contexts up to
// 32k tokens (the split-and-combine path), causal prefill (the unsplit path), head widths 16 to
// 256, and out aliasing q. Without a usable CUDA device every case skips and says why.
#include "cuda_test_util.h"

namespace kvpr::kernels {
namespace {

using cuda_test::expect_close;
using cuda_test::Pair;
using cuda_test::random_values;
using cuda_test::round_to;
using cuda_test::Side;
using cuda_test::tol_for;

struct Case {
  const char* name;
  std::int64_t n_heads, n_kv_heads, head_dim;
  std::vector<std::int64_t> s;  // decode: context of each row (plus one new token); empty: prefill
  std::int64_t prefill = 0;     // prefill rows (causal: row j sees tokens [0, j])
  bool alias = false;           // out = q
};

// Runs one case on one side. Decode rows get segments [0, l), [l, s) from one K,V tensor each
// (as recomputed and fetched rows) and the new token from a third, so the split lands anywhere.
std::vector<float> run(Side& side, const Case& c, const std::vector<float>& q,
                       const std::vector<float>& kv, std::int64_t rows, std::int64_t total) {
  const std::int64_t h = c.n_heads * c.head_dim;
  const std::int64_t h_kv = c.n_kv_heads * c.head_dim;
  const Tensor tq = side.put(q, rows, h);
  const Tensor tk =
      side.put(std::vector<float>(kv.begin(), kv.begin() + total * h_kv), total, h_kv);
  const Tensor tv = side.put(std::vector<float>(kv.begin() + total * h_kv, kv.end()), total, h_kv);
  const Tensor out = c.alias ? tq : side.alloc(rows, h);
  std::vector<AttnSegment> segs;
  if (c.prefill > 0) {
    for (std::int64_t j = 0; j < rows; ++j)
      segs.push_back({j, tk.rows_slice(0, j + 1), tv.rows_slice(0, j + 1)});
  } else {
    std::int64_t row0 = 0;
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t s = c.s[static_cast<std::size_t>(i)];
      const std::int64_t l = s / 3;
      if (l > 0) segs.push_back({i, tk.rows_slice(row0, l), tv.rows_slice(row0, l)});
      if (s > l)
        segs.push_back({i, tk.rows_slice(row0 + l, s - l), tv.rows_slice(row0 + l, s - l)});
      segs.push_back({i, tk.rows_slice(row0 + s, 1), tv.rows_slice(row0 + s, 1)});  // new token
      row0 += s + 1;
    }
  }
  const AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                        1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  side.backend->attention(tq, segs, shape, out);
  return side.get(out);
}

class CudaAttention : public ::testing::TestWithParam<DType> {};

TEST_P(CudaAttention, MatchesTheCpuReference) {
  KVPR_SKIP_WITHOUT_CUDA();
  const std::vector<Case> cases = {
      {"decode-mha", 8, 8, 64, {1, 200, 5000}},
      {"decode-gqa-long", 32, 8, 128, {4100, 3}},
      {"decode-32k", 8, 2, 128, {32768}},
      {"decode-batch-32", 8, 8, 64, std::vector<std::int64_t>(32, 700)},
      {"head-dim-16", 4, 4, 16, {40, 5, 17}},
      {"head-dim-256", 2, 1, 256, {600}},
      {"prefill-causal", 8, 8, 64, {}, 300},
      {"prefill-gqa-alias", 4, 2, 32, {}, 65, true},
  };
  Pair pair(GetParam());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::int64_t rows = c.prefill > 0 ? c.prefill : static_cast<std::int64_t>(c.s.size());
    std::int64_t total = c.prefill;
    for (std::int64_t s : c.s) total += s + 1;
    auto q = random_values(static_cast<std::size_t>(rows * c.n_heads * c.head_dim), 21, 1.5f);
    auto kv = random_values(static_cast<std::size_t>(2 * total * c.n_kv_heads * c.head_dim), 22);
    round_to(GetParam(), q);
    round_to(GetParam(), kv);
    const auto want = run(pair.cpu, c, q, kv, rows, total);
    const auto got = run(pair.cuda, c, q, kv, rows, total);
    const auto t = tol_for(GetParam(), 2e-5f);
    expect_close(got, want, t.atol, t.rtol, c.name);
    pair.cpu.buffers.clear();
    pair.cuda.buffers.clear();
  }
}

// The three-way split's device half: attention with stats (unsplit and split-and-combine paths)
// and attention_merge of a host partial, against the CPU reference.
TEST_P(CudaAttention, StatsAndMergeMatchTheCpuReference) {
  KVPR_SKIP_WITHOUT_CUDA();
  const std::vector<Case> cases = {
      {"decode-mha", 8, 8, 64, {1, 200, 5000}},
      {"decode-gqa-long", 32, 8, 128, {4100, 3}},
      {"decode-32k", 8, 2, 128, {32768}},
  };
  Pair pair(GetParam());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto rows = static_cast<std::int64_t>(c.s.size());
    std::int64_t total = 0;
    for (std::int64_t s : c.s) total += s + 1;
    const std::int64_t h = c.n_heads * c.head_dim, h_kv = c.n_kv_heads * c.head_dim;
    auto q = random_values(static_cast<std::size_t>(rows * h), 31, 1.5f);
    auto kv = random_values(static_cast<std::size_t>(2 * total * h_kv), 32);
    round_to(GetParam(), q);
    round_to(GetParam(), kv);
    // A host partial per (row, head): max, sum, normalised output; row 0's is empty.
    auto partials =
        random_values(static_cast<std::size_t>(rows * c.n_heads * (c.head_dim + 2)), 33, 1.0f);
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t hd = 0; hd < c.n_heads; ++hd) {
        float* p = &partials[static_cast<std::size_t>((r * c.n_heads + hd) * (c.head_dim + 2))];
        p[0] = r == 0 ? -INFINITY : 2.0f * p[0];
        p[1] = r == 0 ? 0.0f : 50.0f * (1.5f + p[1]);
      }
    }
    const AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                          1.0f / std::sqrt(static_cast<float>(c.head_dim))};
    std::vector<std::vector<float>> stats, merged;
    for (Side* side : {&pair.cpu, &pair.cuda}) {
      const Tensor tq = side->put(q, rows, h);
      const Tensor tk =
          side->put(std::vector<float>(kv.begin(), kv.begin() + total * h_kv), total, h_kv);
      const Tensor tv =
          side->put(std::vector<float>(kv.begin() + total * h_kv, kv.end()), total, h_kv);
      std::vector<AttnSegment> segs;
      std::int64_t row0 = 0;
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = c.s[static_cast<std::size_t>(i)] + 1;
        segs.push_back({i, tk.rows_slice(row0, n), tv.rows_slice(row0, n)});
        row0 += n;
      }
      const auto f32 = [&](std::int64_t cols) {
        side->buffers.push_back(
            side->backend->alloc(static_cast<std::size_t>(rows * cols) * sizeof(float)));
        return side->buffers.back()->tensor(DType::f32, rows, cols);
      };
      const Tensor st = f32(2 * c.n_heads), tp = f32(c.n_heads * (c.head_dim + 2));
      side->backend->copy_to_device(Queue::compute, tp, partials.data(), DType::f32);
      const Tensor out = side->alloc(rows, h);
      side->backend->attention(tq, segs, shape, out, &st);
      stats.push_back(side->get(st));
      side->backend->attention_merge(out, st, tp, shape);
      merged.push_back(side->get(out));
    }
    const auto t = tol_for(GetParam(), 2e-5f);
    expect_close(stats[1], stats[0], t.atol, 1e-4f, c.name);
    expect_close(merged[1], merged[0], t.atol, t.rtol, c.name);
    pair.cpu.buffers.clear();
    pair.cuda.buffers.clear();
  }
}

TEST_P(CudaAttention, RejectsARowWithoutKeys) {
  KVPR_SKIP_WITHOUT_CUDA();
  Pair pair(GetParam());
  const Tensor q = pair.cuda.alloc(2, 64);
  const Tensor k = pair.cuda.alloc(3, 64);
  const std::vector<AttnSegment> segs = {{0, k, k}};
  try {
    pair.cuda.backend->attention(q, segs, {4, 4, 16, 1.0f}, q);
    FAIL() << "attention with a row without keys succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("query row 1 has no keys"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaAttention,
                         ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         cuda_test::dtype_name);

}  // namespace
}  // namespace kvpr::kernels
