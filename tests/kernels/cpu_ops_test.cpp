// Every op of the CPU backend against a naive double-precision reference written out here, on
// random inputs of several shapes, plus the argument checks (one Error line naming the op) and the
// tensor-view helpers. The CPU backend is the reference of kvpr, so these references are the
// formulas themselves, in the simplest loops that state them. (Registry, views and queues:
// cpu_queue_test.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <tuple>

#include "kvpr/common/error.h"
#include "kvpr/kernels/backend.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {
namespace {

using Vec = std::vector<float>;
using Ref = std::vector<double>;

// Owns a CPU backend and the buffers made for one test; uploads and downloads on the compute queue.
class CpuOps : public ::testing::Test {
 protected:
  Tensor make(std::int64_t rows, std::int64_t cols, DType dtype = DType::f32) {
    buffers_.push_back(backend_->alloc(static_cast<std::size_t>(rows * cols) * size_of(dtype)));
    return buffers_.back()->tensor(dtype, rows, cols);
  }
  Tensor upload(const Vec& host, std::int64_t rows, std::int64_t cols) {
    EXPECT_EQ(static_cast<std::int64_t>(host.size()), rows * cols);
    Tensor t = make(rows, cols);
    backend_->copy_to_device(Queue::compute, t, host.data(), DType::f32);
    return t;
  }
  Vec download(const Tensor& t) {
    Vec host(static_cast<std::size_t>(t.numel()));
    backend_->copy_to_host(Queue::compute, host.data(), DType::f32, t);
    return host;
  }
  Vec random(std::size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    Vec v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }

  std::unique_ptr<Backend> backend_ = make_backend(BackendOptions{});
  std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
  std::mt19937 rng_{1234};
};

// |actual − expected| ≤ atol + rtol·|expected| element by element.
void expect_close(const Vec& actual, const Ref& expected, double rtol, double atol) {
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], atol + rtol * std::abs(expected[i])) << "element " << i;
  }
}

// Runs f, expects an Error of kind failed whose message contains every needle.
template <typename F>
void expect_error(F f, std::initializer_list<const char*> needles,
                  ErrorKind kind = ErrorKind::failed) {
  try {
    f();
    ADD_FAILURE() << "no Error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const char* needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos) << message;
  }
}

TEST_F(CpuOps, GemmMatchesReferenceWithAndWithoutBias) {
  for (auto [m, n, k] : {std::tuple{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {8, 96, 256}, {0, 4, 4}}) {
    const Vec x = random(static_cast<std::size_t>(m * k));
    const Vec w = random(static_cast<std::size_t>(n * k));
    const Vec b = random(static_cast<std::size_t>(n));
    const Tensor tx = upload(x, m, k), tw = upload(w, n, k), tb = upload(b, 1, n);
    for (const bool with_bias : {false, true}) {
      const Tensor ty = make(m, n);
      backend_->gemm(tx, tw, with_bias ? &tb : nullptr, ty);
      Ref expected(static_cast<std::size_t>(m * n));
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double s = with_bias ? b[static_cast<std::size_t>(j)] : 0.0;
          for (int l = 0; l < k; ++l)
            s += double(x[std::size_t(i * k + l)]) * w[std::size_t(j * k + l)];
          expected[static_cast<std::size_t>(i * n + j)] = s;
        }
      }
      expect_close(download(ty), expected, 1e-5, 1e-5 * std::sqrt(double(k)));
    }
  }
}

TEST_F(CpuOps, GemmRejectsMismatchedShapesAndOverlap) {
  const Tensor x = make(2, 3), w = make(4, 5), y = make(2, 4), w_ok = make(4, 3);
  expect_error([&] { backend_->gemm(x, w, nullptr, y); }, {"gemm", "[2, 3]", "[4, 5]"});
  const Tensor bad_bias = make(1, 3);
  expect_error([&] { backend_->gemm(x, w_ok, &bad_bias, y); }, {"gemm", "bias", "[1, 3]"});
  const Tensor sq = make(3, 3);
  expect_error([&] { backend_->gemm(sq, sq, nullptr, sq); }, {"gemm", "overlaps"});
  const Tensor x16 = make(2, 3, DType::f16);
  expect_error([&] { backend_->gemm(x16, w_ok, nullptr, y); }, {"gemm", "F16"});
}

TEST_F(CpuOps, AddAndMulAllowAliasing) {
  const Vec a = random(6 * 7), b = random(6 * 7);
  Ref sum(a.size()), prod(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    sum[i] = double(a[i]) + b[i];
    prod[i] = double(a[i]) * b[i];
  }
  const Tensor ta = upload(a, 6, 7), tb = upload(b, 6, 7), ty = make(6, 7);
  backend_->add(ta, tb, ty);
  expect_close(download(ty), sum, 1e-7, 0);
  backend_->mul(ta, tb, ty);
  expect_close(download(ty), prod, 1e-7, 0);
  backend_->add(ta, tb, ta);  // y aliases a
  expect_close(download(ta), sum, 1e-7, 0);
  const Tensor tc = upload(a, 6, 7);
  backend_->mul(tc, tb, tb);  // y aliases b
  expect_close(download(tb), prod, 1e-7, 0);
  expect_error([&] { backend_->add(ta, make(7, 6), ty); }, {"add", "[6, 7]", "[7, 6]"});
  expect_error([&] { backend_->mul(ta, tb, make(6, 6)); }, {"mul", "[6, 6]"});
}

TEST_F(CpuOps, ActivationsHaveKnownValues) {
  const Vec x = {-100.0f, -2.0f, -1.0f, 0.0f, 1.0f, 3.0f};
  const Tensor t = make(2, 3);
  const auto run = [&](Act act) {
    backend_->copy_to_device(Queue::compute, t, x.data(), DType::f32);
    backend_->activation(act, t);
    return download(t);
  };
  expect_close(run(Act::relu), {0, 0, 0, 0, 1, 3}, 0, 0);
  // torch.nn.functional.gelu (erf form) and silu, evaluated in double.
  expect_close(run(Act::gelu),
               {-0.0, -0.04550026389635842, -0.15865525393145707, 0.0, 0.8413447460685429,
                2.9959502001083587},
               1e-6, 1e-7);
  expect_close(run(Act::silu),
               {-3.720075976020836e-42, -0.2384058440442351, -0.2689414213699951, 0.0,
                0.7310585786300049, 2.8577223804673},
               1e-6, 1e-7);
}

TEST_F(CpuOps, LayerNormMatchesReference) {
  for (auto [m, n] : {std::pair{1, 1}, {3, 8}, {5, 257}}) {
    const Vec x = random(std::size_t(m * n), -3.0f, 5.0f), w = random(std::size_t(n)),
              b = random(std::size_t(n));
    const float eps = 1e-5f;
    Ref expected(x.size());
    for (int r = 0; r < m; ++r) {
      double mean = 0, var = 0;
      for (int i = 0; i < n; ++i) mean += x[std::size_t(r * n + i)];
      mean /= n;
      for (int i = 0; i < n; ++i) var += std::pow(x[std::size_t(r * n + i)] - mean, 2);
      var /= n;
      for (int i = 0; i < n; ++i) {
        expected[std::size_t(r * n + i)] =
            (x[std::size_t(r * n + i)] - mean) / std::sqrt(var + eps) * w[std::size_t(i)] +
            b[std::size_t(i)];
      }
    }
    const Tensor tx = upload(x, m, n), ty = make(m, n);
    backend_->layer_norm(tx, upload(w, 1, n), upload(b, 1, n), eps, ty);
    expect_close(download(ty), expected, 1e-5, 1e-5);
    backend_->layer_norm(tx, upload(w, 1, n), upload(b, 1, n), eps, tx);  // in place
    expect_close(download(tx), expected, 1e-5, 1e-5);
  }
  expect_error([&] { backend_->layer_norm(make(2, 4), make(1, 3), make(1, 4), 1e-5f, make(2, 4)); },
               {"layer_norm", "weight", "[1, 3]"});
}

TEST_F(CpuOps, RmsNormMatchesReference) {
  for (auto [m, n] : {std::pair{1, 1}, {4, 16}, {3, 300}}) {
    const Vec x = random(std::size_t(m * n), -2.0f, 2.0f), w = random(std::size_t(n));
    const float eps = 1e-6f;
    Ref expected(x.size());
    for (int r = 0; r < m; ++r) {
      double sq = 0;
      for (int i = 0; i < n; ++i) sq += std::pow(double(x[std::size_t(r * n + i)]), 2);
      const double rstd = 1.0 / std::sqrt(sq / n + eps);
      for (int i = 0; i < n; ++i) {
        expected[std::size_t(r * n + i)] = x[std::size_t(r * n + i)] * rstd * w[std::size_t(i)];
      }
    }
    const Tensor ty = make(m, n);
    backend_->rms_norm(upload(x, m, n), upload(w, 1, n), eps, ty);
    expect_close(download(ty), expected, 1e-5, 1e-6);
  }
  expect_error([&] { backend_->rms_norm(make(2, 4), make(1, 4), 1e-5f, make(4, 2)); },
               {"rms_norm", "[2, 4]", "[4, 2]"});
}

TEST_F(CpuOps, RopeMatchesHandComputedRotation) {
  // Two heads of width 4: dims (0, 2) rotate by pos·1, dims (1, 3) by pos·10000^(-1/2) = pos·0.01.
  const Vec x = {1, 2, 3, 4, 5, 6, 7, 8,  //
                 1, 2, 3, 4, 5, 6, 7, 8};
  const Tensor t = upload(x, 2, 8);
  const std::vector<std::int32_t> positions = {0, 3};
  backend_->rope(t, positions, 2, 4, 10000.0f);
  const double c0 = std::cos(3.0), s0 = std::sin(3.0), c1 = std::cos(0.03), s1 = std::sin(0.03);
  Ref expected(x.begin(), x.begin() + 8);  // position 0 is the identity
  for (int h = 0; h < 2; ++h) {
    const double a0 = x[std::size_t(4 * h)], a1 = x[std::size_t(4 * h + 1)];
    const double b0 = x[std::size_t(4 * h + 2)], b1 = x[std::size_t(4 * h + 3)];
    for (const double v :
         {a0 * c0 - b0 * s0, a1 * c1 - b1 * s1, b0 * c0 + a0 * s0, b1 * c1 + a1 * s1}) {
      expected.push_back(v);
    }
  }
  expect_close(download(t), expected, 1e-6, 1e-6);
}

TEST_F(CpuOps, RopeUsesFloat32AnglesLikeHuggingFace) {
  // At large positions a float32 angle differs from the exact one by ~1e-4 rad; HF computes it in
  // float32 (inv_freq float32, float(pos) · inv_freq), and so must we.
  const int n_heads = 3, d = 64;
  const std::vector<std::int32_t> positions = {4095, 1, 777, 0, 2047};
  const auto m = static_cast<std::int64_t>(positions.size());
  const Vec x = random(std::size_t(m * n_heads * d));
  Ref expected(x.size());
  for (std::int64_t r = 0; r < m; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      for (int i = 0; i < d / 2; ++i) {
        const float inv_freq = 1.0f / std::pow(500000.0f, float(2 * i) / float(d));
        const double angle = float(positions[std::size_t(r)]) * inv_freq;
        const std::size_t lo = std::size_t(r * n_heads * d + h * d + i), hi = lo + d / 2;
        expected[lo] = x[lo] * std::cos(angle) - x[hi] * std::sin(angle);
        expected[hi] = x[hi] * std::cos(angle) + x[lo] * std::sin(angle);
      }
    }
  }
  const Tensor t = upload(x, m, n_heads * d);
  backend_->rope(t, positions, n_heads, d, 500000.0f);
  expect_close(download(t), expected, 2e-6, 2e-6);
  expect_error([&] { backend_->rope(t, positions, n_heads, d + 1, 1e4f); }, {"rope", "65"});
  expect_error(
      [&] {
        backend_->rope(t, std::vector<std::int32_t>{1, 2}, n_heads, d, 1e4f);
      },
      {"rope", "2 positions"});
  expect_error(
      [&] {
        backend_->rope(t, std::vector<std::int32_t>{0, 1, -5, 0, 0}, n_heads, d, 1e4f);
      },
      {"rope", "-5"});
}

TEST_F(CpuOps, EmbeddingGathersRowsAndChecksIds) {
  const Vec table = random(9 * 5);
  const Tensor tt = upload(table, 9, 5);
  const std::vector<std::int32_t> ids = {8, 0, 3, 3};
  const Tensor ty = make(4, 5);
  backend_->embedding(tt, ids, ty);
  Ref expected;
  for (const std::int32_t id : ids) {
    for (int c = 0; c < 5; ++c) expected.push_back(table[std::size_t(id * 5 + c)]);
  }
  expect_close(download(ty), expected, 0, 0);
  expect_error(
      [&] {
        backend_->embedding(tt, std::vector<std::int32_t>{1, 9, 0, 0}, ty);
      },
      {"embedding", "id 9"});
  expect_error(
      [&] {
        backend_->embedding(tt, std::vector<std::int32_t>{-1, 0, 0, 0}, ty);
      },
      {"embedding", "id -1"});
  expect_error([&] { backend_->embedding(tt, ids, make(3, 5)); }, {"embedding", "[3, 5]"});
}

TEST_F(CpuOps, ArgmaxTakesFirstMaximum) {
  const Vec x = {1,  3,  3,  2,   //
                 -5, -4, -4, -9,  //
                 7,  7,  7,  7};
  EXPECT_EQ(backend_->argmax(upload(x, 3, 4)), (std::vector<std::int32_t>{1, 1, 0}));
  const Vec big = random(1000);
  const auto best = std::max_element(big.begin(), big.end()) - big.begin();
  EXPECT_EQ(backend_->argmax(upload(big, 1, 1000)),
            (std::vector<std::int32_t>{std::int32_t(best)}));
  expect_error([&] { backend_->argmax(make(2, 3, DType::bf16)); }, {"argmax", "BF16"});
}

// Attention reference: per query row and head, softmax over the concatenation of that row's
// segments in the order given, in double.
struct HostSegment {
  std::int64_t query;
  std::int64_t n;
  Vec k, v;
};

Ref attention_reference(const Vec& q, std::int64_t n_queries, const std::vector<HostSegment>& segs,
                        const AttnShape& shape) {
  const std::int64_t d = shape.head_dim, h_q = shape.n_heads * d, h_kv = shape.n_kv_heads * d;
  const std::int64_t group = shape.n_heads / shape.n_kv_heads;
  Ref out(std::size_t(n_queries * h_q));
  for (std::int64_t r = 0; r < n_queries; ++r) {
    for (std::int64_t h = 0; h < shape.n_heads; ++h) {
      const std::int64_t kv = h / group;
      std::vector<double> scores;
      std::vector<const float*> values;
      for (const HostSegment& s : segs) {
        if (s.query != r) continue;
        for (std::int64_t t = 0; t < s.n; ++t) {
          double dot = 0;
          for (std::int64_t i = 0; i < d; ++i) {
            dot += double(q[std::size_t(r * h_q + h * d + i)]) *
                   s.k[std::size_t(t * h_kv + kv * d + i)];
          }
          scores.push_back(shape.scale * dot);
          values.push_back(&s.v[std::size_t(t * h_kv + kv * d)]);
        }
      }
      const double max = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& x : scores) sum += (x = std::exp(x - max));
      for (std::int64_t i = 0; i < d; ++i) {
        double acc = 0;
        for (std::size_t t = 0; t < scores.size(); ++t) acc += scores[t] * values[t][i];
        out[std::size_t(r * h_q + h * d + i)] = acc / sum;
      }
    }
  }
  return out;
}

class CpuAttention : public CpuOps {
 protected:
  // Segments as (query, n_tokens) in the order the op receives them.
  void check(const AttnShape& shape, std::int64_t n_queries,
             const std::vector<std::pair<std::int64_t, std::int64_t>>& layout,
             float q_range = 1.0f) {
    const std::int64_t h_q = shape.n_heads * shape.head_dim,
                       h_kv = shape.n_kv_heads * shape.head_dim;
    const Vec q = random(std::size_t(n_queries * h_q), -q_range, q_range);
    std::vector<HostSegment> host;
    std::vector<AttnSegment> device;
    for (const auto& [query, n] : layout) {
      host.push_back({query, n, random(std::size_t(n * h_kv)), random(std::size_t(n * h_kv))});
      device.push_back({query, upload(host.back().k, n, h_kv), upload(host.back().v, n, h_kv)});
    }
    const Tensor tq = upload(q, n_queries, h_q), out = make(n_queries, h_q);
    backend_->attention(tq, device, shape, out);
    const Ref expected = attention_reference(q, n_queries, host, shape);
    expect_close(download(out), expected, 2e-6, 1e-6);
    backend_->attention(tq, device, shape, tq);  // out may alias q
    expect_close(download(tq), expected, 2e-6, 1e-6);
  }
};

TEST_F(CpuAttention, MultiHeadOneSegment) {
  check({4, 4, 16, 0.25f}, 1, {{0, 37}});
  check({2, 2, 8, 1.0f}, 1, {{0, 1}});
}

TEST_F(CpuAttention, GroupedQueryManySegmentsUnevenAndInterleaved) {
  // 8 query heads over 2 KV heads; segments of length 1 and uneven lengths, queries interleaved.
  check({8, 2, 32, 1.0f / std::sqrt(32.0f)}, 3,
        {{2, 7}, {0, 5}, {1, 1}, {2, 20}, {0, 1}, {2, 1}, {0, 12}, {2, 3}});
  check({6, 1, 12, 0.3f}, 2, {{1, 4}, {0, 1}, {1, 1}, {1, 9}, {0, 0}, {0, 2}});
}

TEST_F(CpuAttention, LargeScoresStayStable) {
  // Scores of several hundred: exp overflows unless the maximum is subtracted.
  check({4, 2, 64, 1.0f}, 2, {{0, 50}, {1, 33}, {0, 17}}, 30.0f);
}

TEST_F(CpuAttention, DecodeShapeSmall) {
  // b = 4 sequences, each: recomputed prefix, fetched rest, the new token.
  std::vector<std::pair<std::int64_t, std::int64_t>> layout;
  for (std::int64_t b = 0; b < 4; ++b) {
    layout.emplace_back(b, 40 + 7 * b);
    layout.emplace_back(b, 90 - 5 * b);
    layout.emplace_back(b, 1);
  }
  check({8, 8, 64, 0.125f}, 4, layout);
}

// The split-K path of the three-way split: attention over the first part of each row's tokens
// with stats, a partial (max, sum, output) over the rest, attention_merge: the attention over all
// of them, by the reference. Also: stats are each head's max score and sum of exponentials, and
// an empty partial (sum 0) leaves the output as it is.
TEST_F(CpuAttention, StatsAndMergeEqualAttentionOverTheUnion) {
  const AttnShape shape{8, 2, 16, 0.25f};
  const std::int64_t b = 3, d = shape.head_dim, h_q = shape.n_heads * d,
                     h_kv = shape.n_kv_heads * d;
  const Vec q = random(std::size_t(b * h_q), -3, 3);
  std::vector<HostSegment> all, first, rest;
  std::vector<AttnSegment> dev_first, dev_rest;
  for (std::int64_t r = 0; r < b; ++r) {
    const std::int64_t n_a = 5 + 7 * r, n_b = r == 1 ? 0 : 30 - 4 * r;
    for (auto [n, host, dev] : {std::tuple{n_a, &first, &dev_first}, {n_b, &rest, &dev_rest}}) {
      if (n == 0) continue;
      host->push_back({r, n, random(std::size_t(n * h_kv)), random(std::size_t(n * h_kv))});
      all.push_back(host->back());
      dev->push_back({r, upload(host->back().k, n, h_kv), upload(host->back().v, n, h_kv)});
    }
  }
  const Tensor tq = upload(q, b, h_q), out = make(b, h_q), stats = make(b, 2 * shape.n_heads);
  backend_->attention(tq, dev_first, shape, out, &stats);
  // The partial over the rest, as the host would send it; row 1 has none (sum 0).
  Vec partials(std::size_t(b * shape.n_heads * (d + 2)), 0.0f);
  {
    std::vector<AttnSegment> with_rows = dev_rest;
    const Tensor z = make(1, h_kv);  // a zero key for the row without tokens, ignored below
    backend_->copy_to_device(Queue::compute, z, Vec(std::size_t(h_kv), 0.0f).data(), DType::f32);
    with_rows.push_back({1, z, z});
    const Tensor o = make(b, h_q), st = make(b, 2 * shape.n_heads);
    backend_->attention(tq, with_rows, shape, o, &st);
    const Vec ov = download(o), sv = download(st);
    for (std::int64_t r = 0; r < b; ++r) {
      for (std::int64_t h = 0; h < shape.n_heads; ++h) {
        float* p = &partials[std::size_t((r * shape.n_heads + h) * (d + 2))];
        if (r == 1) {
          p[0] = -std::numeric_limits<float>::infinity();
          continue;
        }
        p[0] = sv[std::size_t(r * 2 * shape.n_heads + 2 * h)];
        p[1] = sv[std::size_t(r * 2 * shape.n_heads + 2 * h + 1)];
        for (std::int64_t i = 0; i < d; ++i) p[2 + i] = ov[std::size_t(r * h_q + h * d + i)];
      }
    }
  }
  // Stats of the first part, against the reference's definition.
  const Vec sv = download(stats);
  for (std::int64_t h = 0; h < shape.n_heads; ++h) {
    double max = -1e300, sum = 0;
    std::vector<double> scores;
    for (std::int64_t t = 0; t < first[0].n; ++t) {
      double dot = 0;
      for (std::int64_t i = 0; i < d; ++i)
        dot +=
            double(q[std::size_t(h * d + i)]) * first[0].k[std::size_t(t * h_kv + h / 4 * d + i)];
      scores.push_back(shape.scale * dot);
      max = std::max(max, scores.back());
    }
    for (double x : scores) sum += std::exp(x - max);
    EXPECT_NEAR(sv[std::size_t(2 * h)], max, 1e-5);
    EXPECT_NEAR(sv[std::size_t(2 * h + 1)], sum, 1e-5 * sum);
  }
  const Tensor tp = upload(partials, b, shape.n_heads * (d + 2));
  backend_->attention_merge(out, stats, tp, shape);
  expect_close(download(out), attention_reference(q, b, all, shape), 1e-5, 2e-6);

  expect_error([&] { backend_->attention_merge(out, stats, make(b, h_q), shape); },
               {"attention_merge", "partials"});
  expect_error([&] { backend_->attention_merge(out, make(b, 3), tp, shape); },
               {"attention_merge", "stats"});
  expect_error([&] { backend_->attention(tq, dev_first, shape, out, &out); },
               {"attention", "stats"});
}

TEST_F(CpuAttention, RejectsBadArguments) {
  const AttnShape shape{4, 2, 8, 1.0f};
  const Tensor q = make(2, 32), out = make(2, 32), k = make(3, 16), v = make(3, 16);
  const std::vector<AttnSegment> only_row0 = {{0, k, v}};
  expect_error([&] { backend_->attention(q, only_row0, shape, out); },
               {"attention", "query row 1"});
  const std::vector<AttnSegment> bad_query = {{0, k, v}, {2, k, v}};
  expect_error([&] { backend_->attention(q, bad_query, shape, out); }, {"attention", "query 2"});
  const Tensor v_short = make(2, 16);
  const std::vector<AttnSegment> mismatch = {{0, k, v}, {1, k, v_short}};
  expect_error([&] { backend_->attention(q, mismatch, shape, out); }, {"attention", "[2, 16]"});
  const std::vector<AttnSegment> ok = {{0, k, v}, {1, k, v}};
  expect_error(
      [&] {
        backend_->attention(q, ok, AttnShape{4, 3, 8, 1.0f}, out);
      },
      {"attention", "n_kv_heads 3"});
  expect_error(
      [&] {
        backend_->attention(q, ok, AttnShape{2, 2, 8, 1.0f}, out);
      },
      {"attention", "[2, 32]"});
  expect_error([&] { backend_->attention(q, ok, shape, make(2, 32, DType::f16)); },
               {"attention", "F16"});
}

}  // namespace
}  // namespace kvpr::kernels
