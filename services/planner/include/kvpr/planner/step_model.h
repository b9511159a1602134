// Predicted time of one decode step as kvpr's engine runs it, from a measured HardwareProfile.
//
// Rather than a closed formula, the model replays the engine's own DecodeSchedule
// (decode_schedule.h) on two timelines, the copy queue and the compute queue: each fetch costs its
// bytes at the measured bandwidth for its size (copies are store blocks, so small-transfer
// bandwidth matters), each recompute chunk its FLOPs at the measured rate for its row count, and
// a queue that waits for the other (a chunk, the K,V, a free slot, the write-backs) waits on the
// timeline too. The paper's schedule is the same replay with one chunk (kPaperChunk).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvpr/common/profile.h"
#include "kvpr/planner/decode_schedule.h"

namespace kvpr::planner {

struct StepShape {
  std::int64_t n_layers = 0;
  std::int64_t h = 0;
  std::int64_t h_kv = 0;
  std::int64_t ffn = 0;
  bool gated_ffn = false;                // LLaMA's gate/up/down (three FFN GEMMs) vs OPT's fc1/fc2
  std::int64_t p = 2;                    // bytes per stored element
  std::int64_t block_tokens = 0;         // tokens per store block (the store's shape says)
  std::vector<std::int64_t> s;           // context length of each sequence before the step
  std::vector<std::int64_t> l;           // split of each sequence
  std::int64_t chunk = kChunkTokens;     // activation rows per recompute chunk
  bool resident = false;                 // K,V already on the device: nothing fetched
  std::vector<std::int64_t> m = {};      // host attention from m of each sequence (empty: m = s)
  std::vector<std::int64_t> micro = {};  // micro-batch sizes (block schedule); empty: one
  double weight_bytes = 0;  // host bytes of each layer's streamed weights (0: all resident)

  ScheduleShape schedule() const {
    return {n_layers, block_tokens, s, l, chunk, resident, m, micro, weight_bytes > 0};
  }
};

struct StepPrediction {
  double total_s = 0;
  double transfer_s = 0;  // copy queue busy (fetches, write-backs and weight loads)
  double weights_s = 0;   // of which weight loads
  double recompute_s = 0;
  double attention_s = 0;
  double other_s = 0;
  double idle_s = 0;            // compute waiting for data
  double host_attention_s = 0;  // host threads attending over [m, s) (overlaps the device)
};

// One predicted span of the replay, in seconds from the step's start (for comparison with the
// engine's recorded trace); chunk_landed, kv_landed and embed are zero-length marks.
struct PredictedSpan {
  OpKind kind = OpKind::drain;
  std::int32_t layer = -1;
  std::int32_t chunk = -1;
  bool copy_queue = false;
  bool host = false;  // on the host's threads (host_attend), neither queue
  double begin_s = 0;
  double end_s = 0;
};

StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape);
// The same replay, also reporting every op's span.
StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape,
                            const std::function<void(const PredictedSpan&)>& on_span);

}  // namespace kvpr::planner
