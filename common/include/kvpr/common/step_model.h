// Predicted time of one decode step as kvpr's engine runs it, from a measured HardwareProfile.
//
// Rather than a closed formula, the model replays the engine's schedule on two timelines, the copy
// queue and the compute queue, in the order the engine enqueues work: the fetches of layers 0 and 1
// up front; per layer, the q/k/v projections, the new token's write-back, the recompute of each
// activation chunk once it has landed, attention once the K,V have landed, the fetch of layer i+2
// into the slot layer i just released, the rest of the layer; the LM head; the final drain. Each
// copy costs its bytes at the measured bandwidth for its size (copies are page-sized pieces of the
// store, so small-transfer bandwidth matters). The paper's schedule is the same replay with one
// chunk holding all activations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvpr/common/profile.h"

namespace kvpr {

struct StepShape {
  std::int64_t n_layers = 0;
  std::int64_t h = 0;
  std::int64_t h_kv = 0;
  std::int64_t ffn = 0;
  bool gated_ffn = false;          // LLaMA's gate/up/down (three FFN GEMMs) vs OPT's fc1/fc2
  std::int64_t p = 2;              // bytes per stored element
  std::int64_t block_tokens = 16;  // tokens per store block: one copy per block and part
  std::vector<std::int64_t> s;     // context length of each sequence before the step
  std::vector<std::int64_t> l;     // split of each sequence
  std::int64_t chunk = 64;         // activation rows per recompute chunk
  bool resident = false;           // K,V already on the device: nothing fetched
};

struct StepPrediction {
  double total_s = 0;
  double transfer_s = 0;  // copy queue busy (fetches and write-backs)
  double recompute_s = 0;
  double attention_s = 0;
  double other_s = 0;
  double idle_s = 0;  // compute waiting for data
};

StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape);

}  // namespace kvpr
