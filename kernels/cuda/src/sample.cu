// The sampling op on the device: kernels::sample_row (row_sampling.h) for every row at once, one
// block per row, so that a decode step sends back a token (and the requested top-n) per sequence
// instead of a row of vocab logits.
//
// Why it is shaped like this: the host reference ranks tokens with nth_element, which has no
// cheap parallel twin. Here every set the reference builds — the top_k candidates, the top_p
// nucleus, the drawn token — is a threshold in the ranking (logit descending, id ascending), and
// each threshold is found by bisection: over the 32 bits of an order-preserving integer key of
// the logit, then over the bits of the token id among the tokens tied at that key. Each bisection
// step is one pass over the row with a block reduction (a count or a sum of weights), so a row
// costs about 32 + 17 passes per threshold in use (top_k, top_p, the draw) plus one pass per
// reported top-n entry: ~125 passes of a 50k row at most, a fraction of a millisecond, with rows
// in parallel. Weights are recomputed in each pass (one exp) rather than stored.
//
// The draw walks the kept tokens in id order, as the reference does: the token is the smallest id
// whose cumulative weight exceeds u · (kept weight). Each weight is the host's for nearly every
// input (sample_exp: exp in double rounded once to float, on both sides); sums are fp64 here as
// there, in another order, so a draw or a nucleus boundary within an fp64 rounding of a token's
// edge may differ from the host's; away from such edges the token is the host's.
#include <cmath>

#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "sample.cuh"

namespace kvpr::kernels::cuda {
namespace {

// kernels::sample_exp on the device: exp in double, rounded once to float.
__device__ float sample_exp(float x) {
  return __double2float_rn(exp(static_cast<double>(x)));
}

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned int kFull = 0xffffffffu;

// An unsigned key with the order of the float (-0 and +0 equal); NaN never reaches it.
__device__ __forceinline__ unsigned int key_of(float x) {
  const unsigned int b = __float_as_uint(x + 0.0f);
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

struct Best {  // a token and its value; "better": larger value, then smaller id
  float value;
  int id;  // -1: none
};
__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.id < 0) return b;
  if (b.id < 0) return a;
  return (b.value > a.value || (b.value == a.value && b.id < a.id)) ? b : a;
}

template <typename V>
__device__ __forceinline__ V shfl_xor(V v, int o) {
  return __shfl_xor_sync(kFull, v, o);
}
__device__ __forceinline__ Best shfl_xor(Best v, int o) {
  return {__shfl_xor_sync(kFull, v.value, o), __shfl_xor_sync(kFull, v.id, o)};
}

// Reductions over the block; every thread gets the result. `scratch` holds kWarps values and is
// reusable as soon as the call returns.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op, V* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = scratch[0];
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  return total;
}

struct Sum {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Count {
  __device__ int operator()(int a, int b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinInt {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxInt {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};
struct Better {
  __device__ Best operator()(Best a, Best b) const { return better(a, b); }
};

// The largest key K for which enough(K) holds; enough(0) holds and enough is true up to some key
// and false after it (a count or a weight of the tokens whose key is >= K). One pass per bit.
template <typename Enough>
__device__ unsigned int highest_key(Enough enough) {
  unsigned int key = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const unsigned int cand = key | (1u << bit);
    if (enough(cand)) key = cand;
  }
  return key;
}

// The largest token id c in [-1, n) for which below(c) holds; below is true up to some id and
// false after it (a count or a weight of the tokens with id <= c). One pass per bit of n.
template <typename Below>
__device__ int last_id_below(int n, Below below) {
  int top = 0;
  while (top < 30 && (1 << (top + 1)) <= n) ++top;  // n <= kMaxSampleVocab = 2^30
  int c = -1;
  for (int bit = top; bit >= 0; --bit) {
    const int cand = c + (1 << bit);
    if (cand < n && below(cand)) c = cand;
  }
  return c;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const T* __restrict__ logits, int n, const SampleRowArgs* __restrict__ args,
                  const std::int32_t* __restrict__ penalty_tokens,
                  const float* __restrict__ penalty_values, float* __restrict__ zs,
                  SampleRowOut* __restrict__ outs) {
  __shared__ double sh_sum[kWarps];
  __shared__ int sh_int[kWarps];
  __shared__ float sh_float[kWarps];
  __shared__ Best sh_best[kWarps];

  const T* row = logits + static_cast<std::int64_t>(blockIdx.x) * n;
  float* z = zs + static_cast<std::int64_t>(blockIdx.x) * n;
  const SampleRowArgs a = args[blockIdx.x];
  SampleRowOut* out = outs + blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);

  // The raw row: NaNs, maximum; z = the row, penalised below.
  int first_nan = n;
  float raw_max = -INFINITY;
  for (int t = tid; t < n; t += kThreads) {
    const float x = to_f32(row[t]);
    if (isnan(x)) first_nan = min(first_nan, t);
    raw_max = fmaxf(raw_max, x);
    z[t] = x;
  }
  first_nan = block_reduce(first_nan, MinInt{}, sh_int);
  raw_max = block_reduce(raw_max, Max{}, sh_float);
  if (first_nan < n || !isfinite(raw_max)) {
    if (tid == 0) {
      out->status = first_nan < n ? SampleStatus::nan : SampleStatus::no_finite_max;
      out->bad_token = first_nan;
      out->max = raw_max;
    }
    return;
  }
  if (tid == 0) {
    for (int i = 0; i < a.penalty_count; ++i) {
      z[penalty_tokens[a.penalty_first + i]] -= penalty_values[a.penalty_first + i];
    }
  }
  __syncthreads();

  // log Z of the raw row, for the reported log-probabilities.
  double sum = 0;
  for (int t = tid; t < n; t += kThreads) sum += sample_exp(to_f32(row[t]) - raw_max);
  sum = block_reduce(sum, Sum{}, sh_sum);
  const double log_z = double(raw_max) + log(sum);

  int token = 0;
  const bool greedy = a.temperature == 0 || a.top_k == 1;
  if (greedy) {
    Best best{0.0f, -1};
    for (int t = tid; t < n; t += kThreads) best = better(best, Best{z[t], t});
    token = block_reduce(best, Better{}, sh_best).id;
  } else {
    float z_max = -INFINITY;
    for (int t = tid; t < n; t += kThreads) z_max = fmaxf(z_max, z[t]);
    z_max = block_reduce(z_max, Max{}, sh_float);
    if (!isfinite(z_max)) {
      if (tid == 0) out->status = SampleStatus::no_finite_z;
      return;
    }

    // top_k: tokens ranked before the k-th, which has key k_key and id k_id.
    const bool use_k = a.top_k > 0 && a.top_k < n;
    const int k = static_cast<int>(use_k ? a.top_k : n);
    unsigned int k_key = 0;
    int k_id = n - 1;
    if (use_k) {
      k_key = highest_key([&](unsigned int cand) {
        int c = 0;
        for (int t = tid; t < n; t += kThreads) c += key_of(z[t]) >= cand ? 1 : 0;
        return block_reduce(c, Count{}, sh_int) >= k;
      });
      int above = 0;
      for (int t = tid; t < n; t += kThreads) above += key_of(z[t]) > k_key ? 1 : 0;
      const int need = k - block_reduce(above, Count{}, sh_int);
      k_id = 1 + last_id_below(n, [&](int cand) {
               int c = 0;
               for (int t = tid; t <= cand; t += kThreads) c += key_of(z[t]) == k_key ? 1 : 0;
               return block_reduce(c, Count{}, sh_int) < need;
             });
    }
    const float inv_t = 1.0f / a.temperature;
    // The candidate's weight (0 outside top_k), as the reference computes it.
    const auto weight = [&](int t, unsigned int key) -> double {
      if (use_k && !(key > k_key || (key == k_key && t <= k_id))) return 0.0;
      return static_cast<double>(sample_exp((z[t] - z_max) * inv_t));
    };
    double total = 0;
    for (int t = tid; t < n; t += kThreads) total += weight(t, key_of(z[t]));
    total = block_reduce(total, Sum{}, sh_sum);

    // top_p: the most likely candidates until their weight reaches top_p · total, the one that
    // crosses it included: those before (p_key, p_id).
    const bool use_p = a.top_p < 1.0;
    unsigned int p_key = 0;
    int p_id = n - 1;
    if (use_p) {
      const double target = a.top_p * total;
      p_key = highest_key([&](unsigned int cand) {
        double w = 0;
        for (int t = tid; t < n; t += kThreads) {
          const unsigned int key = key_of(z[t]);
          if (key >= cand) w += weight(t, key);
        }
        return block_reduce(w, Sum{}, sh_sum) >= target;
      });
      double above = 0;
      for (int t = tid; t < n; t += kThreads) {
        const unsigned int key = key_of(z[t]);
        if (key > p_key) above += weight(t, key);
      }
      above = block_reduce(above, Sum{}, sh_sum);
      p_id = 1 + last_id_below(n, [&](int cand) {
               double w = 0;
               for (int t = tid; t <= cand; t += kThreads) {
                 const unsigned int key = key_of(z[t]);
                 if (key == p_key) w += weight(t, key);
               }
               return above + block_reduce(w, Sum{}, sh_sum) < target;
             });
    }
    // The kept weight of token t (0 outside the nucleus).
    const auto kept = [&](int t) -> double {
      const unsigned int key = key_of(z[t]);
      if (use_p && !(key > p_key || (key == p_key && t <= p_id))) return 0.0;
      return weight(t, key);
    };
    double mass = 0;
    for (int t = tid; t < n; t += kThreads) mass += kept(t);
    mass = block_reduce(mass, Sum{}, sh_sum);
    const double u = a.u * mass;

    // The draw: the smallest id whose cumulative kept weight exceeds u.
    token = 1 + last_id_below(n, [&](int cand) {
              double w = 0;
              for (int t = tid; t <= cand; t += kThreads) w += kept(t);
              return block_reduce(w, Sum{}, sh_sum) <= u;
            });
    if (token >= n) {  // rounding left u over: the last kept token with any weight
      int last = -1;
      for (int t = tid; t < n; t += kThreads) last = kept(t) > 0 ? t : last;
      token = block_reduce(last, MaxInt{}, sh_int);
    }
  }

  // The reported top-n of the raw row, most likely first: each pass takes the best token ranked
  // after the previous one.
  Best prev{INFINITY, -1};
  for (int i = 0; i < a.logprobs; ++i) {
    Best best{0.0f, -1};
    for (int t = tid; t < n; t += kThreads) {
      const float x = to_f32(row[t]);
      if (x < prev.value || (x == prev.value && t > prev.id)) best = better(best, Best{x, t});
    }
    best = block_reduce(best, Better{}, sh_best);
    if (best.id < 0) break;
    if (tid == 0) {
      out->top_token[i] = best.id;
      out->top_logprob[i] = static_cast<float>(double(best.value) - log_z);
    }
    prev = best;
  }
  if (tid == 0) {
    out->status = SampleStatus::ok;
    out->token = token;
    out->logprob = static_cast<float>(double(to_f32(row[token])) - log_z);
  }
}

}  // namespace

void launch_sample(cudaStream_t stream, DType dtype, const void* logits, std::int64_t rows,
                   std::int64_t cols, const SampleRowArgs* args, const std::int32_t* penalty_tokens,
                   const float* penalty_values, float* z, SampleRowOut* out) {
  if (rows <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    sample_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), static_cast<int>(cols), args, penalty_tokens, penalty_values,
        z, out);
  });
  check_launch("sample");
}

}  // namespace kvpr::kernels::cuda
