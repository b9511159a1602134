// Factory of the CUDA backend, implemented in kernels/cuda and linked only into builds configured
// with KVPR_HAVE_CUDA. registry.cpp is its one caller; model code goes through make_backend.
#pragma once

#include <memory>

#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {

// A backend on CUDA device 0 computing in options.compute_dtype (f32, f16 or bf16; accumulation is
// always fp32, and f32 GEMMs do not use TF32). Throws Error(unimplemented) with one line when no
// usable CUDA device is present (naming cudaGetDeviceCount's error) or when options ask for the
// CPU backend's emulated link; other failures name the CUDA call.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

}  // namespace kvpr::kernels
