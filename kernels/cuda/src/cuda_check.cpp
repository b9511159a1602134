// See cuda_check.h. The messages keep the CUDA names (cudaMemcpyAsync, cudaErrorIllegalAddress)
// because those are what a reader searches for; kvpr adds only which backend said it.
#include "cuda_check.h"

#include <string>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::kernels::cuda {

void check(cudaError_t err, std::string_view call) {
  if (err == cudaSuccess) return;
  const ErrorKind kind =
      err == cudaErrorMemoryAllocation ? ErrorKind::overloaded : ErrorKind::failed;
  raise(kind, "cuda backend: ", call, ": ", cudaGetErrorString(err), " (", cudaGetErrorName(err),
        ")");
}

void check_blas(cublasStatus_t status, std::string_view call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const ErrorKind kind =
      status == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::overloaded : ErrorKind::failed;
  raise(kind, "cuda backend: ", call, ": ", cublasGetStatusString(status), " (",
        cublasGetStatusName(status), ")");
}

void check_launch(std::string_view op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) check(err, std::string(op) + " kernel launch");
}

void log_failure(cudaError_t err, std::string_view call) noexcept {
  if (err == cudaSuccess) return;
  log::warn("cuda backend: ", call, ": ", cudaGetErrorString(err), " (", cudaGetErrorName(err),
            ") [in a destructor; continuing]");
}

}  // namespace kvpr::kernels::cuda
