// The CUDA backend's one way of turning a failed CUDA runtime or cuBLAS call into kvpr's error
// vocabulary: a kvpr::Error whose one-line message names the call and the runtime's error string.
// Out-of-memory maps to ErrorKind::overloaded (the caller may retry with a smaller batch);
// everything else is ErrorKind::failed. Destructors never throw: they use `log_failure`, which
// writes the same line to stderr and carries on.
//
// Host-only: included by the backend's .cpp files and by the .cu launchers.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string_view>

namespace kvpr::kernels::cuda {

// Throws Error("cuda backend: <call>: <error string> (<error name>)") unless err == cudaSuccess.
void check(cudaError_t err, std::string_view call);
// The same for cuBLAS status codes.
void check_blas(cublasStatus_t status, std::string_view call);
// After a kernel launch: turns a launch error (bad configuration, no kernel image for this
// device, a sticky error from earlier work) into an Error naming the op.
void check_launch(std::string_view op);
// For destructors: reports a failed call on stderr, never throws.
void log_failure(cudaError_t err, std::string_view call) noexcept;

}  // namespace kvpr::kernels::cuda
