// Entry point of the CUDA backend. Device discovery is real (CUDA runtime); the kernels and
// streams arrive with the CUDA backend's own work, so until then a machine with a device gets an
// `unimplemented` error and one without gets the runtime's reason, both in one line.
#include <cuda_runtime_api.h>

#include "kvpr/common/error.h"
#include "kvpr/kernels/cuda_backend.h"

namespace kvpr::kernels {

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  (void)options;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    raise(ErrorKind::failed, "backend 'cuda': no usable CUDA device (cudaGetDeviceCount: ",
          err == cudaSuccess ? "0 devices" : cudaGetErrorString(err), ")");
  }
  raise(ErrorKind::unimplemented, "backend 'cuda': ", count,
        " device(s) found, but this build's CUDA backend has no kernels yet");
}

}  // namespace kvpr::kernels
