// Host attention (host_attention.h). Numerics: scores and the running (max, sum, accumulator) in
// fp32 per block of kBlock tokens, the accumulator rescaled when a block raises the max, the final
// division in fp32; K and V are converted from the store dtype one head slice at a time.
#include "kvpr/worker/host_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "kvpr/common/error.h"

namespace kvpr::worker {
namespace {

constexpr std::int64_t kBlock = 32;  // tokens scored before the accumulator is updated

// Calls f(row pointer) for each row of the spans, in order.
template <typename F>
void for_each_row(std::span<const kvstore::HostSpan> spans, std::size_t row_bytes, F&& f) {
  for (const auto& span : spans) {
    for (std::int64_t j = 0; j < span.n_tokens; ++j) {
      f(span.data + static_cast<std::size_t>(j) * row_bytes);
    }
  }
}

// Dot product with 8 independent fp32 partial sums, so that -O2 vectorises it without
// -ffast-math (the reassociation is ours, as in the CPU backend's attention).
float dot(const float* __restrict a, const float* __restrict b, std::size_t n) {
  constexpr std::size_t kLanes = 8;
  float acc[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

}  // namespace

void host_attention_partial(const HostAttnSeq& seq, DType dtype, const kernels::AttnShape& shape,
                            std::int64_t kv_head) {
  const std::int64_t d = shape.head_dim;
  const std::int64_t group = shape.n_heads / shape.n_kv_heads;
  const std::size_t row_bytes = static_cast<std::size_t>(shape.n_kv_heads * d) * size_of(dtype);
  const std::size_t head_offset = static_cast<std::size_t>(kv_head * d) * size_of(dtype);
  const auto ud = static_cast<std::size_t>(d);
  const auto ug = static_cast<std::size_t>(group);

  std::vector<float> max(ug, -std::numeric_limits<float>::infinity());
  std::vector<float> sum(ug, 0.0f);
  std::vector<float> acc(ug * ud, 0.0f);
  std::vector<float> keys(kBlock * ud);  // the block's K rows of this head, fp32
  std::vector<float> scores(ug * kBlock);
  std::vector<float> v_row(ud);

  // K and V rows arrive in the same order; a block of K rows is scored, then the same V rows
  // are folded in. The V spans are walked with their own cursor.
  std::size_t v_span = 0;
  std::int64_t v_j = 0;
  const auto next_v = [&]() -> const std::byte* {
    while (v_j >= seq.v[v_span].n_tokens) {
      ++v_span;
      v_j = 0;
    }
    return seq.v[v_span].data + static_cast<std::size_t>(v_j++) * row_bytes;
  };
  std::int64_t n = 0;
  const auto flush = [&] {
    for (std::size_t g = 0; g < ug; ++g) {
      const float* sc = scores.data() + g * kBlock;
      const float block_max = *std::max_element(sc, sc + n);
      const float m_new = std::max(max[g], block_max);
      const float correction =
          max[g] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(max[g] - m_new);
      sum[g] *= correction;
      for (std::size_t i = 0; i < ud; ++i) acc[g * ud + i] *= correction;
      max[g] = m_new;
      for (std::int64_t t = 0; t < n; ++t)
        scores[g * kBlock + static_cast<std::size_t>(t)] = std::exp(sc[t] - m_new);
    }
    for (std::int64_t t = 0; t < n; ++t) {
      convert(next_v() + head_offset, dtype, v_row.data(), DType::f32, ud);
      for (std::size_t g = 0; g < ug; ++g) {
        const float p = scores[g * kBlock + static_cast<std::size_t>(t)];
        sum[g] += p;
        float* a = acc.data() + g * ud;
        for (std::size_t i = 0; i < ud; ++i) a[i] += p * v_row[i];
      }
    }
    n = 0;
  };
  for_each_row(seq.k, row_bytes, [&](const std::byte* row) {
    float* k = keys.data() + static_cast<std::size_t>(n) * ud;
    convert(row + head_offset, dtype, k, DType::f32, ud);
    for (std::size_t g = 0; g < ug; ++g) {
      const float* q = seq.q + (static_cast<std::size_t>(kv_head) * ug + g) * ud;
      scores[g * kBlock + static_cast<std::size_t>(n)] = shape.scale * dot(q, k, ud);
    }
    if (++n == kBlock) flush();
  });
  if (n > 0) flush();

  for (std::size_t g = 0; g < ug; ++g) {
    float* out = seq.partial + (static_cast<std::size_t>(kv_head) * ug + g) * (ud + 2);
    out[0] = max[g];
    out[1] = sum[g];
    const float inv = sum[g] > 0.0f ? 1.0f / sum[g] : 0.0f;
    for (std::size_t i = 0; i < ud; ++i) out[2 + i] = acc[g * ud + i] * inv;
  }
}

HostAttention::HostAttention(int threads) {
  if (threads <= 0) fail("host attention: ", threads, " threads (need at least 1)");
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

HostAttention::~HostAttention() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void HostAttention::start(std::function<void()> ready, std::vector<HostAttnSeq> seqs, DType dtype,
                          const kernels::AttnShape& shape) {
  {
    std::lock_guard lock(mutex_);
    if (units_left_ > 0) fail("host attention: start while a job is running");
    ++job_;
    ready_ = std::move(ready);
    seqs_ = std::move(seqs);
    dtype_ = dtype;
    shape_ = shape;
    next_unit_ = 0;
    n_units_ = static_cast<std::int64_t>(seqs_.size()) * shape.n_kv_heads;
    units_left_ = n_units_;
    error_ = nullptr;
    began_ = false;
    last_job_s_ = 0;
  }
  wake_.notify_all();
}

void HostAttention::wait() {
  std::unique_lock lock(mutex_);
  done_.wait(lock, [this] { return units_left_ == 0; });
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void HostAttention::work() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_ || next_unit_ < n_units_; });
    if (stop_) return;
    // This worker joins the job: once past `ready`, it takes units until none is left.
    const std::uint64_t job = job_;
    const std::function<void()> ready = ready_;
    lock.unlock();
    std::exception_ptr error;
    try {
      if (ready) ready();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (job != job_) continue;  // that job finished meanwhile: join the current one afresh
    if (!began_) {
      began_ = true;
      began_at_ = std::chrono::steady_clock::now();
    }
    std::int64_t finished = 0;
    while (next_unit_ < n_units_) {
      const std::int64_t unit = next_unit_++;
      const auto& seq = seqs_[static_cast<std::size_t>(unit / shape_.n_kv_heads)];
      lock.unlock();
      if (!error) {
        try {
          host_attention_partial(seq, dtype_, shape_, unit % shape_.n_kv_heads);
        } catch (...) {
          error = std::current_exception();
        }
      }
      ++finished;
      lock.lock();
    }
    if (error && !error_) error_ = error;
    units_left_ -= finished;
    if (units_left_ == 0 && finished > 0) {
      last_job_s_ =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - began_at_).count();
      done_.notify_all();
    }
  }
}

}  // namespace kvpr::worker
