// Throughput mode's planner: for a job of many sequences, the device batch (micro-batch size b),
// the number of micro-batches G of the block schedule, the share of each layer's weights kept on
// the device, the split l and — where the profile measured host attention — the share of each
// context attended on the host (the three-way split, per micro-batch) that maximise predicted
// decode tokens/s within a device-memory budget.
// Every candidate is predicted by replaying the one decode schedule (step_model.h) with its
// micro-batches and weight loads, so the plan predicts exactly what the engine runs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvpr/common/profile.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::planner {

// The weights as placement sees them: what stays on the device whatever the share, and each
// layer's matrices in placement order (device bytes in the compute dtype, host bytes as stored).
// The one placement rule (DeviceModel places by it, the planner plans by it): at a share f, a
// matrix stays on the device when the middle of its bytes falls within f of the layer's bytes.
struct WeightLayout {
  std::uint64_t fixed_device_bytes = 0;
  struct Matrix {
    std::uint64_t device = 0;
    std::uint64_t host = 0;
  };
  std::vector<Matrix> matrices;  // one layer's
  // Shares at which placement changes (a prefix of the matrices resident): 0, …, 1.
  std::vector<double> fractions() const;
  // Which matrices stay on the device at a share, in `matrices` order.
  std::vector<bool> resident(double fraction) const;
  // Device bytes of every layer's resident matrices and of one streaming slot, at a share.
  std::uint64_t resident_bytes(double fraction, std::int64_t n_layers) const;
  std::uint64_t slot_bytes(double fraction) const;
  std::uint64_t streamed_host_bytes(double fraction) const;  // per layer
  // All the device holds for weights at a share: the fixed part, the resident matrices of every
  // layer and two streaming slots.
  std::uint64_t device_bytes(double fraction, std::int64_t n_layers) const;
};

struct ThroughputRequest {
  StepShape model;  // n_layers, h, h_kv, ffn, gated_ffn, p, block_tokens
  WeightLayout weights;
  std::int64_t sequences = 1;       // of the job: G·b never exceeds it
  std::int64_t context = 1;         // tokens each sequence holds during its decode steps
  std::uint64_t device_memory = 0;  // 0: no budget
  // kvpr: split and host share searched; transfer: l = 0 and nothing on the host (FlexGen's).
  Policy policy = Policy::kvpr;
  // Fixed choices (0 / negative: searched).
  std::int64_t micro_batch = 0;
  std::int64_t micro_batches = 0;
  double weight_fraction = -1;
  // Device bytes of the engine's buffers for a batch of b·G sequences in G micro-batches.
  std::function<std::uint64_t(std::int64_t batch, std::int64_t micro_batches)> working_set;
};

struct ThroughputOption {
  std::int64_t micro_batch = 0;
  std::int64_t micro_batches = 0;
  double weight_fraction = 1;
  double ratio = 0;       // l ≈ ratio · s
  double host_ratio = 0;  // [m, s) on the host: s − m ≈ host_ratio · s (0: nothing)
  std::int64_t chunk = kChunkTokens;
  std::uint64_t device_bytes = 0;
  bool fits = true;
  StepPrediction predicted;  // one decode step of all G micro-batches
  double tokens_per_s = 0;
};

struct ThroughputPlan {
  ThroughputOption best;
  std::vector<ThroughputOption> options;  // the best of each (b, G) searched
  std::string reason;
};

// Fails naming the budget when no candidate fits.
ThroughputPlan plan_throughput(const HardwareProfile& profile, const ThroughputRequest& request);

// One candidate's predicted step (the same replay as the search).
StepPrediction predict_throughput_step(const HardwareProfile& profile,
                                       const ThroughputRequest& request,
                                       const ThroughputOption& option);

}  // namespace kvpr::planner
