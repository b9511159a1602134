// Private pieces shared by engine.cpp (construction, prefill, layer math) and engine_decode.cpp
// (the decode step's fetch/recompute pipeline).
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "kvpr/worker/engine.h"

namespace kvpr::worker {

// Scratch buffer roles; each role owns one growable device buffer.
enum ScratchRole : std::size_t {
  kX,
  kXn,
  kQ,
  kK,
  kV,
  kAttn,
  kTmp,
  kFfn1,
  kFfn2,
  kProj,
  kLogits,
  kWriteback,  // then 3 per layer: activation, K, V of the new tokens
};

// Device-held K,V of one sequence, per layer, grown by doubling (policy resident).
struct Engine::Resident {
  struct Layer {
    std::unique_ptr<kernels::DeviceBuffer> k, v;
    std::int64_t capacity = 0;
    std::int64_t length = 0;
  };
  std::vector<Layer> layers;
};

// Staging for one layer in flight: its activations, the K,V recomputed from them, the K,V fetched.
struct Engine::Slot {
  struct Chunk {
    std::int64_t rows_end = 0;  // activation rows [previous rows_end, rows_end) have landed
    std::shared_ptr<kernels::Event> landed;
  };
  std::unique_ptr<kernels::DeviceBuffer> act, rk, rv, fk, fv;
  std::vector<Chunk> chunks;
  std::shared_ptr<kernels::Event> kv_landed;
  std::shared_ptr<kernels::Event> free;  // compute is done reading this slot
};

struct Engine::StepContext {
  std::vector<SeqHandle> seqs;
  std::vector<std::int64_t> s;              // context length before this step
  std::vector<std::int64_t> l;              // split
  std::vector<std::int64_t> act_off;        // first activation row of each sequence in a slot
  std::vector<std::int64_t> kv_off;         // first fetched K,V row of each sequence in a slot
  std::vector<std::int32_t> act_positions;  // position of every activation row
  std::int64_t l_total = 0;
  std::int64_t kv_total = 0;
  std::int64_t chunk = 64;
  PhaseTimes* times = nullptr;
};

// Adds the wall time of a scope to one phase.
class Engine::Clock {
 public:
  explicit Clock(double& phase) : phase_(phase), start_(std::chrono::steady_clock::now()) {}
  ~Clock() {
    phase_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  Clock(const Clock&) = delete;
  Clock& operator=(const Clock&) = delete;

 private:
  double& phase_;
  std::chrono::steady_clock::time_point start_;
};

// A tensor view of a buffer that is grown (reallocated) when too small.
kernels::Tensor grown(kernels::Backend& backend, std::unique_ptr<kernels::DeviceBuffer>& buffer,
                      std::int64_t rows, std::int64_t cols);

}  // namespace kvpr::worker
