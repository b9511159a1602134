// An in-process engine stack on the CUDA backend for the model-level GPU tests: checkpoint →
// CUDA backend (compute dtype chosen by the test) → device model → host store → cost-model
// planner → engine: tests/worker/stack.h with the CUDA backend.
#pragma once

#include "../../worker/stack.h"

namespace kvpr::worker::cuda_testing {

inline kernels::BackendOptions cuda_options(DType compute) {
  kernels::BackendOptions options;
  options.name = "cuda";
  options.compute_dtype = compute;
  return options;
}

struct CudaStack : kvpr::worker::testing::Stack {
  CudaStack(const std::string& dir, planner::Policy policy, std::optional<std::int64_t> split,
            DType compute = DType::f32)
      : Stack(dir, policy, split, std::uint64_t{1} << 28, cuda_options(compute)) {}
};

using kvpr::worker::testing::max_abs_diff;

}  // namespace kvpr::worker::cuda_testing
