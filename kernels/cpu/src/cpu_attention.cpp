// Attention over KV segments, the decode hot path of the CPU backend (b sequences × s tokens ×
// n_heads heads). A query row's keys arrive as several segments — recomputed from activations,
// fetched from host memory, the new token — and softmax runs over their concatenation in the order
// given, exactly as if they were one tensor.
//
// Shape of the computation: for each query row, two streaming passes over its K and V rows, each
// row read once for all heads (the heads of one KV group share the loads under GQA):
//   1. scores[h][t] = scale · q_h · k_t for every token t of every segment, into one scratch row;
//   2. per head: max, p = exp(score − max) in fp32, denominator summed in double;
//   3. acc_h += p[h][t] · v_t, in fp32 over blocks of 64 tokens and in double across blocks;
//      out_h = acc_h / denominator.
// Scratch is sized once per call for the longest query, so there is no allocation per token, and
// the inner loops work on fixed blocks of 8 lanes so that -O2 vectorises them without -ffast-math.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_ops.h"

namespace kvpr::kernels::cpu {
namespace {

constexpr std::int64_t kLanes = 8;
// Tokens summed in fp32 before the partial sums move to double: short enough that fp32 rounding
// stays ~1e-7 relative, long enough that the double adds cost nothing.
constexpr std::int64_t kFlushTokens = 64;

// Dot product with 8 independent fp32 partial sums (the reassociation is ours, made explicit).
float dot(const float* __restrict a, const float* __restrict b, std::int64_t n) {
  float acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// acc[i] += p · v[i] in fp32; the caller flushes acc into double every kFlushTokens tokens.
void axpy(float* __restrict acc, float p, const float* __restrict v, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::int64_t j = 0; j < kLanes; ++j) acc[i + j] += p * v[i + j];
  }
  for (; i < n; ++i) acc[i] += p * v[i];
}

}  // namespace

void attention(const Tensor& q, std::span<const AttnSegment> segments, const AttnShape& shape,
               const Tensor& out, const Tensor* stats) {
  // The arguments passed check_attention (op_checks.h): every segment names a row of q, every row
  // has keys.
  const std::int64_t n_queries = q.rows;
  const std::int64_t n_heads = shape.n_heads;
  const std::int64_t head_dim = shape.head_dim;
  const std::int64_t group = n_heads / shape.n_kv_heads;
  const std::int64_t h_q = n_heads * head_dim;
  const std::int64_t h_kv = shape.n_kv_heads * head_dim;

  // Bucket the segments by query, keeping their order (a stable counting sort), and count tokens.
  std::vector<std::size_t> first(static_cast<std::size_t>(n_queries) + 1, 0);
  std::vector<std::int64_t> n_tokens(static_cast<std::size_t>(n_queries), 0);
  for (const auto& segment : segments) {
    const auto query = static_cast<std::size_t>(segment.query);
    ++first[query + 1];
    n_tokens[query] += segment.k.rows;
  }
  for (std::size_t r = 0; r < n_tokens.size(); ++r) {
    first[r + 1] += first[r];
  }
  std::vector<std::size_t> order(segments.size());
  {
    std::vector<std::size_t> next(first.begin(), first.end() - 1);
    for (std::size_t i = 0; i < segments.size(); ++i) {
      order[next[static_cast<std::size_t>(segments[i].query)]++] = i;
    }
  }

  if (n_queries == 0) return;
  const std::int64_t max_tokens = *std::max_element(n_tokens.begin(), n_tokens.end());
  // Offset of query head h's KV head within a K or V row.
  std::vector<std::int64_t> kv_head(static_cast<std::size_t>(n_heads));
  for (std::int64_t h = 0; h < n_heads; ++h) {
    kv_head[static_cast<std::size_t>(h)] = h / group * head_dim;
  }
  std::vector<float> q_row(static_cast<std::size_t>(h_q));  // copy: out may alias q
  std::vector<float> scores(static_cast<std::size_t>(n_heads * max_tokens));
  std::vector<double> denominators(static_cast<std::size_t>(n_heads));
  std::vector<float> maxima(static_cast<std::size_t>(n_heads));
  std::vector<double> acc(static_cast<std::size_t>(h_q));
  std::vector<float> acc_f(static_cast<std::size_t>(h_q));

  for (std::int64_t r = 0; r < n_queries; ++r) {
    const auto bucket = static_cast<std::size_t>(r);
    const float* pq = static_cast<const float*>(q.data) + r * h_q;
    std::copy(pq, pq + h_q, q_row.begin());

    // Pass 1: scaled scores, token-major over K so each K row is streamed once.
    std::int64_t t = 0;
    for (std::size_t s = first[bucket]; s < first[bucket + 1]; ++s) {
      const Tensor& k = segments[order[s]].k;
      for (std::int64_t j = 0; j < k.rows; ++j, ++t) {
        const float* k_row = static_cast<const float*>(k.data) + j * h_kv;
        for (std::int64_t h = 0; h < n_heads; ++h) {
          const float* k_head = k_row + kv_head[static_cast<std::size_t>(h)];
          scores[static_cast<std::size_t>(h * max_tokens + t)] =
              shape.scale * dot(q_row.data() + h * head_dim, k_head, head_dim);
        }
      }
    }

    // Softmax numerators in place; denominators in double.
    const std::int64_t n = n_tokens[bucket];
    for (std::int64_t h = 0; h < n_heads; ++h) {
      float* row = scores.data() + h * max_tokens;
      const float max = *std::max_element(row, row + n);
      maxima[static_cast<std::size_t>(h)] = max;
      double sum = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        row[i] = std::exp(row[i] - max);
        sum += row[i];
      }
      denominators[static_cast<std::size_t>(h)] = sum;
    }

    // Pass 2: weighted sum of V, token-major.
    std::fill(acc.begin(), acc.end(), 0.0);
    std::fill(acc_f.begin(), acc_f.end(), 0.0f);
    const auto flush = [&] {
      for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += acc_f[i];
      std::fill(acc_f.begin(), acc_f.end(), 0.0f);
    };
    t = 0;
    for (std::size_t s = first[bucket]; s < first[bucket + 1]; ++s) {
      const Tensor& v = segments[order[s]].v;
      for (std::int64_t j = 0; j < v.rows; ++j, ++t) {
        const float* v_row = static_cast<const float*>(v.data) + j * h_kv;
        for (std::int64_t h = 0; h < n_heads; ++h) {
          axpy(acc_f.data() + h * head_dim, scores[static_cast<std::size_t>(h * max_tokens + t)],
               v_row + kv_head[static_cast<std::size_t>(h)], head_dim);
        }
        if ((t + 1) % kFlushTokens == 0) flush();
      }
    }
    flush();

    float* po = static_cast<float*>(out.data) + r * h_q;
    for (std::int64_t h = 0; h < n_heads; ++h) {
      const double inv = 1.0 / denominators[static_cast<std::size_t>(h)];
      for (std::int64_t d = 0; d < head_dim; ++d) {
        po[h * head_dim + d] =
            static_cast<float>(acc[static_cast<std::size_t>(h * head_dim + d)] * inv);
      }
    }
    if (stats) {
      float* ps = static_cast<float*>(stats->data) + r * 2 * n_heads;
      for (std::int64_t h = 0; h < n_heads; ++h) {
        ps[2 * h] = maxima[static_cast<std::size_t>(h)];
        ps[2 * h + 1] = static_cast<float>(denominators[static_cast<std::size_t>(h)]);
      }
    }
  }
}

void attention_merge(const Tensor& out, const Tensor& stats, const Tensor& partials,
                     const AttnShape& shape) {
  // Per (row, head): M = max(m_a, m_b), w = sum · e^{m − M} for each side, out = (w_a·o_a +
  // w_b·o_b) / (w_a + w_b), in fp32 (double for the weights' ratio). An empty partial (sum 0,
  // max −inf) has weight 0.
  const std::int64_t n_heads = shape.n_heads;
  const std::int64_t head_dim = shape.head_dim;
  for (std::int64_t r = 0; r < out.rows; ++r) {
    float* po = static_cast<float*>(out.data) + r * n_heads * head_dim;
    const float* ps = static_cast<const float*>(stats.data) + r * 2 * n_heads;
    const float* pp = static_cast<const float*>(partials.data) + r * n_heads * (head_dim + 2);
    for (std::int64_t h = 0; h < n_heads; ++h) {
      const float* part = pp + h * (head_dim + 2);
      if (!(part[1] > 0.0f)) continue;
      const double m = std::max(ps[2 * h], part[0]);
      const double w_a = static_cast<double>(ps[2 * h + 1]) * std::exp(ps[2 * h] - m);
      const double w_b = static_cast<double>(part[1]) * std::exp(part[0] - m);
      const double inv = 1.0 / (w_a + w_b);
      float* o = po + h * head_dim;
      for (std::int64_t d = 0; d < head_dim; ++d) {
        o[d] = static_cast<float>((w_a * o[d] + w_b * part[2 + d]) * inv);
      }
    }
  }
}

}  // namespace kvpr::kernels::cpu
