// Attention of one query row per sequence (decode) or per prompt token (prefill) over several K,V
// segments — recomputed from activations, fetched from the host, the new token — with one softmax
// over their concatenation, as if they were one tensor.
//
// Why it is shaped like this:
// - Contexts reach 32k tokens, so nothing proportional to the context is kept on chip: each warp
//   runs an online softmax (running max m, running sum l, accumulator rescaled when m grows) over
//   the tokens it is given, in fp32. Shared memory is 4 warps × head_dim floats, whatever s is.
// - One block per (query row, head, token split). A warp owns one token at a time: lane i holds
//   head elements i, i+32, … of q and of the accumulator, so each K and V row of the head is read
//   with coalesced loads and q·k is a warp shuffle reduction. The four warps take tokens
//   round-robin and are merged in shared memory at the end.
// - Decode with a small batch has only b·n_heads (row, head) pairs, too few to fill an H200's
//   132 SMs; the host (attention_plan.cpp) then splits each row's tokens into up to 128 ranges
//   whose partial (m, l, acc) are merged by a second kernel (the "flash-decoding" split). Prefill
//   has enough rows and runs unsplit, writing the output directly.
// - Grouped-query attention: head h reads KV head h / (n_heads / n_kv_heads), as in the CPU
//   reference. Segments are walked in order, so the token order inside the softmax is the
//   reference's; only the association of the fp32 sums differs.
// out may alias q: a block reads its (row, head) slice of q into registers before any block
// writes that slice, and only that block writes it (or, split, the combine kernel afterwards).
#include <cmath>

#include "attention.cuh"
#include "block_reduce.cuh"
#include "cuda_check.h"
#include "dtype_dispatch.cuh"

namespace kvpr::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPerLane = static_cast<int>(kAttnMaxHeadDim / 32);

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttnArgs a) {
  __shared__ float sm_m[kWarps];
  __shared__ float sm_l[kWarps];
  __shared__ float sm_acc[kWarps][kAttnMaxHeadDim];

  const std::int64_t r = blockIdx.x;
  const std::int64_t h = blockIdx.y;
  const std::int64_t split = blockIdx.z;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t hd = a.head_dim;
  const std::int64_t h_q = a.n_heads * hd;
  const std::int64_t h_kv = (a.n_heads / a.group) * hd;
  const std::int64_t kv_off = (h / a.group) * hd;

  const std::int64_t seg_begin = a.query_first[r];
  const std::int64_t seg_end = a.query_first[r + 1];
  std::int64_t n_r = 0;
  for (std::int64_t s = seg_begin; s < seg_end; ++s) n_r += a.segs[s].n_tokens;
  const std::int64_t t_begin = split * a.split_tokens;
  const std::int64_t t_end = n_r < t_begin + a.split_tokens ? n_r : t_begin + a.split_tokens;

  const T* q = static_cast<const T*>(a.q) + r * h_q + h * hd;
  float qv[kPerLane];
  float acc[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const std::int64_t d = lane + 32 * c;
    qv[c] = d < hd ? to_f32(q[d]) : 0.0f;
    acc[c] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;

  std::int64_t seg = seg_begin;
  std::int64_t seg_start = 0;  // first token of `seg` within the row
  for (std::int64_t t = t_begin + warp; t < t_end; t += kWarps) {
    while (t >= seg_start + a.segs[seg].n_tokens) {
      seg_start += a.segs[seg].n_tokens;
      ++seg;
    }
    const std::int64_t j = t - seg_start;
    const T* k = static_cast<const T*>(a.segs[seg].k) + j * h_kv + kv_off;
    const T* v = static_cast<const T*>(a.segs[seg].v) + j * h_kv + kv_off;
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const std::int64_t d = lane + 32 * c;
      if (d < hd) dot += qv[c] * to_f32(k[d]);
    }
    const float score = a.scale * warp_sum(dot);
    const float m_new = fmaxf(m, score);
    const float correction = m == -INFINITY ? 0.0f : expf(m - m_new);
    const float p = expf(score - m_new);
    l = l * correction + p;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const std::int64_t d = lane + 32 * c;
      if (d < hd) acc[c] = acc[c] * correction + p * to_f32(v[d]);
    }
    m = m_new;
  }

  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const std::int64_t d = lane + 32 * c;
    if (d < hd) sm_acc[warp][d] = acc[c];
  }
  __syncthreads();

  float m_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, sm_m[w]);
  float weight[kWarps];
  float l_all = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - m_all);
    l_all += sm_l[w] * weight[w];
  }
  if (a.n_splits == 1) {
    T* out = static_cast<T*>(a.out) + r * h_q + h * hd;
    for (std::int64_t d = threadIdx.x; d < hd; d += kThreads) {
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += sm_acc[w][d] * weight[w];
      out[d] = from_f32<T>(total / l_all);
    }
    if (a.stats && threadIdx.x == 0) {
      a.stats[2 * (r * a.n_heads + h)] = m_all;
      a.stats[2 * (r * a.n_heads + h) + 1] = l_all;
    }
    return;
  }
  const std::int64_t p = (r * a.n_heads + h) * a.n_splits + split;
  for (std::int64_t d = threadIdx.x; d < hd; d += kThreads) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += sm_acc[w][d] * weight[w];
    a.partial_acc[p * hd + d] = total;
  }
  if (threadIdx.x == 0) {
    a.partial_ml[2 * p] = m_all;
    a.partial_ml[2 * p + 1] = l_all;
  }
}

// Merges the splits of one (row, head): out = Σ_s e^{m_s − M} acc_s / Σ_s e^{m_s − M} l_s.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_combine_kernel(AttnArgs a) {
  __shared__ float weight[kAttnMaxSplits];
  __shared__ float sh_l;
  const std::int64_t r = blockIdx.x;
  const std::int64_t h = blockIdx.y;
  const std::int64_t hd = a.head_dim;
  const std::int64_t base = (r * a.n_heads + h) * a.n_splits;
  float m_all = -INFINITY;
  for (std::int64_t s = 0; s < a.n_splits; ++s) m_all = fmaxf(m_all, a.partial_ml[2 * (base + s)]);
  for (std::int64_t s = threadIdx.x; s < a.n_splits; s += kThreads) {
    const float m_s = a.partial_ml[2 * (base + s)];
    weight[s] = m_s == -INFINITY ? 0.0f : expf(m_s - m_all);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float l_all = 0.0f;
    for (std::int64_t s = 0; s < a.n_splits; ++s)
      l_all += weight[s] * a.partial_ml[2 * (base + s) + 1];
    sh_l = l_all;
  }
  __syncthreads();
  T* out = static_cast<T*>(a.out) + r * a.n_heads * hd + h * hd;
  for (std::int64_t d = threadIdx.x; d < hd; d += kThreads) {
    float total = 0.0f;
    for (std::int64_t s = 0; s < a.n_splits; ++s)
      total += weight[s] * a.partial_acc[(base + s) * hd + d];
    out[d] = from_f32<T>(total / sh_l);
  }
  if (a.stats && threadIdx.x == 0) {
    a.stats[2 * (r * a.n_heads + h)] = m_all;
    a.stats[2 * (r * a.n_heads + h) + 1] = sh_l;
  }
}

// One block per (row, head): the device's (max, sum, out) and the host's partial, merged as the
// combine kernel above merges splits. Reads out's slice before writing it, one block per slice.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_merge_kernel(T* out, const float* stats, const float* partials, std::int64_t n_heads,
                           std::int64_t head_dim) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t h = blockIdx.y;
  const float* part = partials + (r * n_heads + h) * (head_dim + 2);
  if (!(part[1] > 0.0f)) return;
  const float m_a = stats[2 * (r * n_heads + h)];
  const float m = fmaxf(m_a, part[0]);
  const float w_a = stats[2 * (r * n_heads + h) + 1] * expf(m_a - m);
  const float w_b = part[1] * expf(part[0] - m);
  const float inv = 1.0f / (w_a + w_b);
  T* o = out + r * n_heads * head_dim + h * head_dim;
  for (std::int64_t d = threadIdx.x; d < head_dim; d += kThreads) {
    o[d] = from_f32<T>((w_a * to_f32(o[d]) + w_b * part[2 + d]) * inv);
  }
}

}  // namespace

std::size_t attention_partial_ml_offset(const AttnArgs& args) {
  if (args.n_splits <= 1) return 0;
  const auto blocks = static_cast<std::size_t>(args.n_queries * args.n_heads * args.n_splits);
  return blocks * static_cast<std::size_t>(args.head_dim) * sizeof(float);
}

std::size_t attention_partial_bytes(const AttnArgs& args) {
  if (args.n_splits <= 1) return 0;
  const auto blocks = static_cast<std::size_t>(args.n_queries * args.n_heads * args.n_splits);
  return attention_partial_ml_offset(args) + blocks * 2 * sizeof(float);
}

void launch_attention(cudaStream_t stream, DType dtype, const AttnArgs& args) {
  if (args.n_queries <= 0) return;
  if (args.head_dim > kAttnMaxHeadDim || args.n_splits < 1 || args.n_splits > kAttnMaxSplits) {
    fail("attention: head_dim ", args.head_dim, " / splits ", args.n_splits,
         " outside the kernel's limits");
  }
  const dim3 grid(static_cast<unsigned int>(args.n_queries),
                  static_cast<unsigned int>(args.n_heads),
                  static_cast<unsigned int>(args.n_splits));
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_kernel<T><<<grid, kThreads, 0, stream>>>(args);
    if (args.n_splits > 1) {
      const dim3 combine_grid(static_cast<unsigned int>(args.n_queries),
                              static_cast<unsigned int>(args.n_heads));
      attention_combine_kernel<T><<<combine_grid, kThreads, 0, stream>>>(args);
    }
  });
  check_launch("attention");
}

void launch_attention_merge(cudaStream_t stream, DType dtype, void* out, const float* stats,
                            const float* partials, std::int64_t rows, std::int64_t n_heads,
                            std::int64_t head_dim) {
  const dim3 grid(static_cast<unsigned int>(rows), static_cast<unsigned int>(n_heads));
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_merge_kernel<T>
        <<<grid, kThreads, 0, stream>>>(static_cast<T*>(out), stats, partials, n_heads, head_dim);
  });
  check_launch("attention_merge");
}

}  // namespace kvpr::kernels::cuda
