// Host attention (the third part of the three-way split) against the CPU backend's attention,
// which is kvpr's reference: the partial (max, sum, output) of every query head over K,V rows read
// from store-like blocks in fp32 and fp16, grouped-query and multi-head, and merged with the
// device's part by attention_merge into the attention over all rows; the pool with several
// threads gives the same partials as one, back to back jobs, and reports a worker's error.
#include "kvpr/worker/host_attention.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <random>

#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::worker {
namespace {

using kernels::AttnSegment;
using kernels::AttnShape;
using kernels::Queue;
using kernels::Tensor;

struct Rows {
  std::vector<float> k, v;  // [n, h_kv] fp32
  std::vector<std::byte> k_stored, v_stored;
  std::vector<kvstore::HostSpan> k_spans, v_spans;
};

// n rows stored as `dtype`, cut into blocks of `block` rows (the store's layout: one span each);
// the fp32 copies are what the stored values read back as.
Rows make_rows(std::mt19937& rng, std::int64_t n, std::int64_t h_kv, DType dtype,
               std::int64_t block) {
  std::uniform_real_distribution<float> dist(-1, 1);
  Rows r;
  const auto count = static_cast<std::size_t>(n * h_kv);
  for (auto* host : {&r.k, &r.v}) {
    host->resize(count);
    for (float& x : *host) x = dist(rng);
  }
  r.k_stored.resize(count * size_of(dtype));
  r.v_stored.resize(count * size_of(dtype));
  convert(r.k.data(), DType::f32, r.k_stored.data(), dtype, count);
  convert(r.v.data(), DType::f32, r.v_stored.data(), dtype, count);
  convert(r.k_stored.data(), dtype, r.k.data(), DType::f32, count);
  convert(r.v_stored.data(), dtype, r.v.data(), DType::f32, count);
  const std::size_t row_bytes = static_cast<std::size_t>(h_kv) * size_of(dtype);
  for (std::int64_t t = 0; t < n; t += block) {
    const std::int64_t len = std::min(block, n - t);
    r.k_spans.push_back({r.k_stored.data() + static_cast<std::size_t>(t) * row_bytes, t, len});
    r.v_spans.push_back({r.v_stored.data() + static_cast<std::size_t>(t) * row_bytes, t, len});
  }
  return r;
}

class HostAttentionTest : public ::testing::TestWithParam<DType> {
 protected:
  Tensor upload(const std::vector<float>& host, std::int64_t rows, std::int64_t cols) {
    buffers_.push_back(backend_->alloc(host.size() * sizeof(float)));
    Tensor t = buffers_.back()->tensor(DType::f32, rows, cols);
    backend_->copy_to_device(Queue::compute, t, host.data(), DType::f32);
    return t;
  }
  std::vector<float> download(const Tensor& t) {
    std::vector<float> host(static_cast<std::size_t>(t.numel()));
    backend_->copy_to_host(Queue::compute, host.data(), DType::f32, t);
    return host;
  }

  // b sequences: the device attends over `device_rows[i]` rows, the host over `host_rows[i]`;
  // merged, they must equal the backend's attention over both.
  void check(const AttnShape& shape, const std::vector<std::int64_t>& device_rows,
             const std::vector<std::int64_t>& host_rows, int threads) {
    const DType dtype = GetParam();
    const auto b = static_cast<std::int64_t>(device_rows.size());
    const std::int64_t d = shape.head_dim, h_q = shape.n_heads * d, h_kv = shape.n_kv_heads * d;
    std::uniform_real_distribution<float> dist(-2, 2);
    std::vector<float> q(static_cast<std::size_t>(b * h_q));
    for (float& x : q) x = dist(rng_);
    std::vector<Rows> dev, host;
    std::vector<AttnSegment> dev_segs, all_segs;
    for (std::int64_t i = 0; i < b; ++i) {
      const auto u = static_cast<std::size_t>(i);
      dev.push_back(make_rows(rng_, device_rows[u], h_kv, DType::f32, 16));
      host.push_back(make_rows(rng_, host_rows[u], h_kv, dtype, 16));
      const AttnSegment a{i, upload(dev[u].k, device_rows[u], h_kv),
                          upload(dev[u].v, device_rows[u], h_kv)};
      dev_segs.push_back(a);
      all_segs.push_back(a);
      if (host_rows[u] > 0) {
        all_segs.push_back(
            {i, upload(host[u].k, host_rows[u], h_kv), upload(host[u].v, host_rows[u], h_kv)});
      }
    }
    // The host's partials, from the pool.
    std::vector<float> partials(static_cast<std::size_t>(b * shape.n_heads * (d + 2)));
    std::vector<HostAttnSeq> seqs;
    for (std::int64_t i = 0; i < b; ++i) {
      const auto u = static_cast<std::size_t>(i);
      seqs.push_back({q.data() + u * static_cast<std::size_t>(h_q), host[u].k_spans,
                      host[u].v_spans,
                      partials.data() + u * static_cast<std::size_t>(shape.n_heads * (d + 2))});
    }
    HostAttention pool(threads);
    std::atomic<bool> ready = false;
    pool.start([&] { ready = true; }, seqs, dtype, shape);
    pool.wait();
    EXPECT_TRUE(ready);
    std::vector<float> again(partials.size());
    for (auto& s : seqs) s.partial = again.data() + (s.partial - partials.data());
    pool.start({}, seqs, dtype, shape);  // a second job on the same pool
    pool.wait();
    EXPECT_EQ(again, partials);

    const Tensor tq = upload(q, b, h_q);
    buffers_.push_back(backend_->alloc(static_cast<std::size_t>(b * h_q) * sizeof(float)));
    const Tensor out = buffers_.back()->tensor(DType::f32, b, h_q);
    buffers_.push_back(backend_->alloc(static_cast<std::size_t>(b * 2 * shape.n_heads) * 4));
    const Tensor stats = buffers_.back()->tensor(DType::f32, b, 2 * shape.n_heads);
    backend_->attention(tq, dev_segs, shape, out, &stats);
    backend_->attention_merge(out, stats, upload(partials, b, shape.n_heads * (d + 2)), shape);
    buffers_.push_back(backend_->alloc(static_cast<std::size_t>(b * h_q) * sizeof(float)));
    const Tensor expected = buffers_.back()->tensor(DType::f32, b, h_q);
    backend_->attention(tq, all_segs, shape, expected);
    const auto got = download(out), want = download(expected);
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-6) << i;
  }

  std::unique_ptr<kernels::Backend> backend_ = kernels::make_backend({});
  std::vector<std::unique_ptr<kernels::DeviceBuffer>> buffers_;
  std::mt19937 rng_{99};
};

TEST_P(HostAttentionTest, GroupedQueryPartialsMergeIntoTheWholeAttention) {
  check({8, 2, 16, 0.25f}, {1, 9, 3}, {40, 0, 17}, 3);
}

TEST_P(HostAttentionTest, MultiHeadOneThreadLongRows) {
  check({4, 4, 32, 1.0f / std::sqrt(32.0f)}, {1, 1}, {100, 65}, 1);
}

INSTANTIATE_TEST_SUITE_P(StoreDtypes, HostAttentionTest,
                         ::testing::Values(DType::f32, DType::f16, DType::bf16));

// A unit may read whole rows or a range of heads of each row (HostAttention splits a sequence's
// heads only when there are more threads than sequences): every head's partial is bit for bit
// the same whichever range computed it, and so is the pool's with more threads than sequences.
TEST(HostAttention, EveryHeadRangeGivesTheSamePartials) {
  const AttnShape shape{8, 4, 16, 0.25f};
  std::mt19937 rng(5);
  const Rows rows = make_rows(rng, 75, 4 * 16, DType::f16, 16);
  std::vector<float> q(8 * 16);
  std::uniform_real_distribution<float> dist(-2, 2);
  for (float& x : q) x = dist(rng);
  const std::size_t size = 8 * (16 + 2);
  std::vector<float> whole(size), split(size, 7.0f), pooled(size, 7.0f);
  host_attention_partial({q.data(), rows.k_spans, rows.v_spans, whole.data()}, DType::f16, shape, 0,
                         4);
  host_attention_partial({q.data(), rows.k_spans, rows.v_spans, split.data()}, DType::f16, shape, 0,
                         1);
  host_attention_partial({q.data(), rows.k_spans, rows.v_spans, split.data()}, DType::f16, shape, 1,
                         4);
  EXPECT_EQ(split, whole);
  HostAttention pool(3);  // one sequence, three threads: three ranges of heads
  pool.start({}, {{q.data(), rows.k_spans, rows.v_spans, pooled.data()}}, DType::f16, shape);
  pool.wait();
  EXPECT_EQ(pooled, whole);
  EXPECT_THROW(host_attention_partial({q.data(), {}, {}, split.data()}, DType::f16, shape, 2, 5),
               Error);
}

TEST(HostAttention, EmptyRangeIsAZeroWeightPartialAndErrorsReachWait) {
  const AttnShape shape{2, 1, 4, 1.0f};
  const std::vector<float> q(8, 1.0f);
  std::vector<float> partial(12, 7.0f);
  host_attention_partial({q.data(), {}, {}, partial.data()}, DType::f32, shape, 0, 1);
  EXPECT_EQ(partial[0], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(partial[1], 0.0f);
  EXPECT_EQ(partial[2], 0.0f);
  HostAttention pool(2);
  pool.start([] { fail("query download failed"); }, {{q.data(), {}, {}, partial.data()}},
             DType::f32, shape);
  EXPECT_THROW(pool.wait(), Error);
  pool.start({}, {{q.data(), {}, {}, partial.data()}}, DType::f32, shape);
  EXPECT_NO_THROW(pool.wait());
  EXPECT_THROW(HostAttention(0), Error);
}

}  // namespace
}  // namespace kvpr::worker
