// Launcher of the sampling op (sample.cu): one token per row of logits, chosen on the device as
// kernels::sample_row chooses on the host (row_sampling.h), so that only the choice leaves the
// device. Host-callable; no device code here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpr/common/dtype.h"
#include "kvpr/kernels/row_sampling.h"

namespace kvpr::kernels::cuda {

// One row's numbers as the kernel reads them (RowSampling without its vector).
struct SampleRowArgs {
  float temperature = 0;
  double top_p = 1;
  std::int64_t top_k = 0;
  double u = 0;
  std::int32_t logprobs = 0;
  std::int32_t penalty_first = 0;  // this row's penalties: [first, first + count) of the arrays
  std::int32_t penalty_count = 0;
};

enum class SampleStatus : std::int32_t { ok = 0, nan = 1, no_finite_max = 2, no_finite_z = 3 };

// One row's result as the kernel writes it.
struct SampleRowOut {
  std::int32_t token = 0;
  float logprob = 0;
  SampleStatus status = SampleStatus::ok;
  std::int32_t bad_token = 0;  // status nan: the first token whose logit is NaN
  float max = 0;               // status no_finite_max: the row's maximum
  std::int32_t top_token[kMaxSampleLogprobs] = {};
  float top_logprob[kMaxSampleLogprobs] = {};
};

// logits [rows, cols] in `dtype`; args, the penalty arrays, z [rows, cols] (fp32 scratch) and out
// [rows] are device memory. cols fits an int32 index (checked by the caller).
void launch_sample(cudaStream_t stream, DType dtype, const void* logits, std::int64_t rows,
                   std::int64_t cols, const SampleRowArgs* args, const std::int32_t* penalty_tokens,
                   const float* penalty_values, float* z, SampleRowOut* out);

}  // namespace kvpr::kernels::cuda
