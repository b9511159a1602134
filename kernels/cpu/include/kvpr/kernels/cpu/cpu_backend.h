// Factory of the CPU backend, the numerical reference every other backend is tested against.
// Device memory is 64-byte aligned host memory, the compute queue runs on the caller's thread, and
// the copy queue is a thread of its own (optionally throttled to emulate a slower host↔device
// link). Most code should call kvpr::kernels::make_backend({.name = "cpu"}) instead of this
// directly.
#pragma once

#include <memory>

#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {

// Uses options.emulate_link_* for the copy queue and options.threads for OpenBLAS (process-wide);
// options.name is not looked at.
std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options);

}  // namespace kvpr::kernels
