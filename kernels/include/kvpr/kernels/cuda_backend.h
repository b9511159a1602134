// Factory of the CUDA backend, implemented in kernels/cuda and linked only into builds configured
// with KVPR_HAVE_CUDA. registry.cpp is its one caller; model code goes through make_backend.
#pragma once

#include <memory>

#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {

// Throws Error(unimplemented) with one line when no usable CUDA device is present.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

}  // namespace kvpr::kernels
