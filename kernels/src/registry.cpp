// Backends by name: the one place that knows which backends this build has. The CPU backend is
// always compiled in; the CUDA one only under KVPR_HAVE_CUDA (set on this target by CMake), so a
// CPU-only build still understands the name "cuda" and says why it cannot make one.
#include "kvpr/kernels/registry.h"

#include "kvpr/common/error.h"
#include "kvpr/kernels/cpu/cpu_backend.h"
#ifdef KVPR_HAVE_CUDA
#include "kvpr/kernels/cuda_backend.h"
#endif

namespace kvpr::kernels {

std::vector<std::string> backend_names() {
#ifdef KVPR_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

DType resolve_compute_dtype(std::string_view flag, std::string_view backend, DType checkpoint) {
  if (flag == "auto") return backend == "cpu" ? DType::f32 : checkpoint;
  if (flag == "f32") return DType::f32;
  if (flag == "f16") return DType::f16;
  if (flag == "bf16") return DType::bf16;
  fail("--compute-dtype must be auto, f32, f16 or bf16, got '", flag, "'");
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  const auto budgeted = [&](std::unique_ptr<Backend> backend) {
    backend->set_memory_budget(options.device_memory);
    return backend;
  };
  if (options.name == "cpu") return budgeted(make_cpu_backend(options));
  if (options.name == "cuda") {
#ifdef KVPR_HAVE_CUDA
    return budgeted(make_cuda_backend(options));
#else
    throw Error(ErrorKind::unimplemented,
                "backend 'cuda': this build has no CUDA backend (configure with KVPR_CUDA=ON on a "
                "machine with nvcc)");
#endif
  }
  std::string known;
  for (const std::string& name : backend_names()) known += (known.empty() ? "" : ", ") + name;
  fail("unknown backend '", options.name, "' (known: ", known, ")");
}

}  // namespace kvpr::kernels
