// Host attention (host_attention.h). Numerics: scores and the running (max, sum, accumulator) in
// fp32 per block of kBlock tokens, the accumulator rescaled when a block raises the max, the final
// division in fp32; K and V are converted from the store dtype one row slice (the unit's KV heads,
// contiguous) at a time.
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
                            std::int64_t kv_begin, std::int64_t kv_end) {
  if (kv_begin < 0 || kv_end > shape.n_kv_heads || kv_begin >= kv_end) {
    fail("host attention: KV heads [", kv_begin, ", ", kv_end, ") outside [0, ", shape.n_kv_heads,
         ")");
  }
  const auto ud = static_cast<std::size_t>(shape.head_dim);
  const auto ug = static_cast<std::size_t>(shape.n_heads / shape.n_kv_heads);
  const auto kv_heads = static_cast<std::size_t>(kv_end - kv_begin);
  const std::size_t heads = kv_heads * ug;  // query heads of the range
  const std::size_t width = kv_heads * ud;  // elements of a row this range reads, contiguous
  const std::size_t row_bytes = static_cast<std::size_t>(shape.n_kv_heads) * ud * size_of(dtype);
  const std::size_t offset = static_cast<std::size_t>(kv_begin) * ud * size_of(dtype);
  const float* q0 = seq.q + static_cast<std::size_t>(kv_begin) * ug * ud;

  std::vector<float> max(heads, -std::numeric_limits<float>::infinity());
  std::vector<float> sum(heads, 0.0f);
  std::vector<float> acc(heads * ud, 0.0f);
  std::vector<float> keys(kBlock * width);  // the block's K rows of the range, fp32
  std::vector<float> scores(heads * kBlock);
  std::vector<float> v_row(width);

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
    for (std::size_t h = 0; h < heads; ++h) {
      float* sc = scores.data() + h * kBlock;
      const float block_max = *std::max_element(sc, sc + n);
      const float m_new = std::max(max[h], block_max);
      const float correction =
          max[h] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(max[h] - m_new);
      sum[h] *= correction;
      for (std::size_t i = 0; i < ud; ++i) acc[h * ud + i] *= correction;
      max[h] = m_new;
      for (std::int64_t t = 0; t < n; ++t) sc[t] = std::exp(sc[t] - m_new);
    }
    for (std::int64_t t = 0; t < n; ++t) {
      convert(next_v() + offset, dtype, v_row.data(), DType::f32, width);
      for (std::size_t h = 0; h < heads; ++h) {
        const float p = scores[h * kBlock + static_cast<std::size_t>(t)];
        sum[h] += p;
        float* a = acc.data() + h * ud;
        const float* v = v_row.data() + (h / ug) * ud;
        for (std::size_t i = 0; i < ud; ++i) a[i] += p * v[i];
      }
    }
    n = 0;
  };
  for_each_row(seq.k, row_bytes, [&](const std::byte* row) {
    float* k = keys.data() + static_cast<std::size_t>(n) * width;
    convert(row + offset, dtype, k, DType::f32, width);
    for (std::size_t h = 0; h < heads; ++h) {
      scores[h * kBlock + static_cast<std::size_t>(n)] =
          shape.scale * dot(q0 + h * ud, k + (h / ug) * ud, ud);
    }
    if (++n == kBlock) flush();
  });
  if (n > 0) flush();

  float* out0 = seq.partial + static_cast<std::size_t>(kv_begin) * ug * (ud + 2);
  for (std::size_t h = 0; h < heads; ++h) {
    float* out = out0 + h * (ud + 2);
    out[0] = max[h];
    out[1] = sum[h];
    const float inv = sum[h] > 0.0f ? 1.0f / sum[h] : 0.0f;
    for (std::size_t i = 0; i < ud; ++i) out[2 + i] = acc[h * ud + i] * inv;
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
    // Enough units to keep every thread busy, each as wide (and its row reads as contiguous) as
    // that allows: one unit per sequence reads whole rows, which streams from memory at the
    // kernel's rate; a head slice per unit strides through the rows and runs at a fraction of it
    // once the blocks are out of cache.
    const auto n_seqs = std::max<std::int64_t>(static_cast<std::int64_t>(seqs_.size()), 1);
    const auto threads = static_cast<std::int64_t>(workers_.size());
    head_groups_ = std::clamp<std::int64_t>((threads + n_seqs - 1) / n_seqs, 1, shape.n_kv_heads);
    n_units_ = static_cast<std::int64_t>(seqs_.size()) * head_groups_;
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
      const auto& seq = seqs_[static_cast<std::size_t>(unit / head_groups_)];
      const std::int64_t group = unit % head_groups_;
      const std::int64_t kv_begin = group * shape_.n_kv_heads / head_groups_;
      const std::int64_t kv_end = (group + 1) * shape_.n_kv_heads / head_groups_;
      lock.unlock();
      if (!error) {
        try {
          host_attention_partial(seq, dtype_, shape_, kv_begin, kv_end);
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
