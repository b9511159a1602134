// Embedding gather: token and learned-position embeddings. Why the ids are checked on the host and
// not here: a kernel cannot raise a one-line error, and an out-of-range id would read another
// allocation silently; the backend validates the ids (they are on the host anyway, to be
// uploaded) and this kernel trusts them.
//
// Shape: one thread per output element, grid-stride; consecutive threads copy consecutive columns
// of one row, so loads and stores are coalesced.
#include "cuda_check.h"
#include "dtype_dispatch.cuh"
#include "embedding.cuh"

namespace kvpr::kernels::cuda {
namespace {

template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, const std::int32_t* __restrict__ ids,
                                 T* __restrict__ y, std::int64_t n_ids, std::int64_t cols) {
  const std::int64_t total = n_ids * cols;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const std::int64_t r = idx / cols;
    const std::int64_t c = idx % cols;
    y[idx] = table[static_cast<std::int64_t>(ids[r]) * cols + c];
  }
}

}  // namespace

void launch_embedding(cudaStream_t stream, DType dtype, const void* table, const std::int32_t* ids,
                      void* y, std::int64_t n_ids, std::int64_t cols) {
  const std::int64_t total = n_ids * cols;
  if (total <= 0) return;
  constexpr unsigned int kThreads = 256;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    embedding_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(table), ids, static_cast<T*>(y), n_ids, cols);
  });
  check_launch("embedding");
}

}  // namespace kvpr::kernels::cuda
