// See cuda_device.h.
#include "cuda_device.h"

#include <cstdint>
#include <limits>

#include "cuda_check.h"
#include "kvpr/common/error.h"

namespace kvpr::kernels::cuda {
namespace {

constexpr std::size_t kBlasWorkspaceBytes = std::size_t{32} << 20;  // cuBLAS's advice for Hopper
constexpr std::size_t kArgsRingBytes = std::size_t{8} << 20;

DeviceInfo select(int ordinal) {
  check(cudaSetDevice(ordinal), "cudaSetDevice");
  DeviceInfo info;
  info.ordinal = ordinal;
  cudaDeviceProp props{};
  check(cudaGetDeviceProperties(&props, ordinal), "cudaGetDeviceProperties");
  info.name = props.name;
  info.sm_count = props.multiProcessorCount;
  info.cc_major = props.major;
  info.cc_minor = props.minor;
  info.total_memory = props.totalGlobalMem;
  check(cudaDeviceGetAttribute(&info.clock_khz, cudaDevAttrClockRate, ordinal),
        "cudaDeviceGetAttribute(ClockRate)");
  int pools = 0;
  check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, ordinal),
        "cudaDeviceGetAttribute(MemoryPoolsSupported)");
  if (pools == 0) {
    raise(ErrorKind::unimplemented, "backend 'cuda': device ", ordinal, " (", info.name,
          ") does not support stream-ordered allocation (cudaMallocAsync)");
  }
  // Keep freed pool memory cached: staging buffers and scratch come and go every step.
  cudaMemPool_t pool = nullptr;
  check(cudaDeviceGetDefaultMemPool(&pool, ordinal), "cudaDeviceGetDefaultMemPool");
  std::uint64_t threshold = std::numeric_limits<std::uint64_t>::max();
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold),
        "cudaMemPoolSetAttribute");
  return info;
}

}  // namespace

Device::Device(int ordinal)
    : info_(select(ordinal)),
      blas_workspace_(kBlasWorkspaceBytes),
      args_(compute_.get(), kArgsRingBytes),
      compute_lane_(compute_.get(), false, registry_),
      copy_lane_(copy_.get(), true, registry_) {
  check_blas(cublasSetStream(blas_.get(), compute_.get()), "cublasSetStream");
  // No TF32 for fp32 operands: fp32 GEMMs are true fp32 products.
  check_blas(cublasSetMathMode(blas_.get(), CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  check_blas(cublasSetWorkspace(blas_.get(), blas_workspace_.data(), blas_workspace_.bytes()),
             "cublasSetWorkspace");
}

Device::~Device() {
  log_failure(cudaStreamSynchronize(copy_.get()), "cudaStreamSynchronize");
  log_failure(cudaStreamSynchronize(compute_.get()), "cudaStreamSynchronize");
  registry_.clear();
}

void* Device::allocate(std::size_t bytes) {
  void* data = nullptr;
  check(cudaMallocAsync(&data, bytes == 0 ? 1 : bytes, compute_.get()), "cudaMallocAsync");
  // The copy stream may use the memory next: order it after the allocation.
  try {
    EventHandle allocated(false);
    check(cudaEventRecord(allocated.get(), compute_.get()), "cudaEventRecord");
    check(cudaStreamWaitEvent(copy_.get(), allocated.get(), 0), "cudaStreamWaitEvent");
  } catch (...) {
    log_failure(cudaFreeAsync(data, compute_.get()), "cudaFreeAsync");
    throw;
  }
  return data;
}

void Device::release(void* data) noexcept {
  if (data == nullptr) return;
  // Everything already enqueued on the copy stream (which may read or write the buffer) must be
  // done before the compute stream frees it.
  cudaEvent_t copy_tail = nullptr;
  cudaError_t err = cudaEventCreateWithFlags(&copy_tail, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventRecord(copy_tail, copy_.get());
  if (err == cudaSuccess) err = cudaStreamWaitEvent(compute_.get(), copy_tail, 0);
  if (err != cudaSuccess) {
    log_failure(err, "ordering a buffer's free after the copy stream");
    // Without the ordering only a full synchronisation makes the free safe.
    log_failure(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  if (copy_tail != nullptr) log_failure(cudaEventDestroy(copy_tail), "cudaEventDestroy");
  log_failure(cudaFreeAsync(data, compute_.get()), "cudaFreeAsync");
}

void Device::synchronize() {
  copy_lane_.end_run();
  compute_lane_.end_run();
  check(cudaStreamSynchronize(copy_.get()), "cudaStreamSynchronize(copy)");
  check(cudaStreamSynchronize(compute_.get()), "cudaStreamSynchronize(compute)");
}

CopyStats Device::copy_stats() {
  CopyStats stats;
  compute_lane_.add_stats(stats);
  copy_lane_.add_stats(stats);
  return stats;
}

}  // namespace kvpr::kernels::cuda
