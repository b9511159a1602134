// Backends by name. The CPU backend always exists; the CUDA backend is registered when the build
// has it and fails at creation with one line when no usable device is present.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels {

struct BackendOptions {
  std::string name = "cpu";
  // Copy-queue throttle emulating a slower host↔device link (CPU backend): 0 = unthrottled.
  double emulate_link_gbps = 0;       // GB/s = 1e9 bytes/s
  double emulate_link_latency_s = 0;  // added to every copy
  int threads = 0;                    // compute threads (0 = backend default)
  // The dtype device tensors hold for compute (CUDA backend: f32, f16 or bf16, always with fp32
  // accumulation; the CPU backend computes in f32 whatever this says).
  DType compute_dtype = DType::f32;
  // Device memory the backend's buffers may hold (Backend::set_memory_budget); 0 = the device's.
  std::uint64_t device_memory = 0;
};

std::unique_ptr<Backend> make_backend(const BackendOptions& options);

// `--compute-dtype`: "f32", "f16" or "bf16" as given; "auto" computes a half-precision checkpoint
// in its own dtype on a GPU backend (fp32 GEMMs run at a fifteenth of the fp16 rate on an H200,
// and fp32 device tensors hold twice the bytes) and in f32 everywhere else. An Error names any
// other value.
DType resolve_compute_dtype(std::string_view flag, std::string_view backend, DType checkpoint);
std::vector<std::string> backend_names();

}  // namespace kvpr::kernels
