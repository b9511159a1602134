// The decode step's schedule, written once: the engine executes it on a backend's two queues and
// the step model replays it on two predicted timelines, so the planner predicts exactly the order
// of work the engine enqueues.
//
// Per layer, the copy queue brings the activations of tokens [0, l) of every sequence into one of
// kStagingSlots staging slots, in store blocks, marking a chunk each time `chunk` more rows have
// landed; then the K,V of tokens [l, s). The compute queue projects the new tokens (attention
// input, q, k, v), hands their rows to the copy queue to be written back, recomputes K,V of each
// activation chunk as soon as it has landed, waits for the fetched K,V, attends, releases the slot
// and finishes the layer (output projection, FFN). Fetches run kPrefetchLayers layers ahead: the
// fetch of layer i + 2 goes into the slot layer i has just released. The step ends with the LM
// head and a drain of the copy queue (the write-backs have landed in host memory). Each layer's
// rows are announced to the store (prefetch) one layer before that layer's fetch is enqueued, so a
// store whose memory lies on another host brings them over while compute runs.
//
// Three-way split: when some sequence has m < s, tokens [m, s) are attended on the host from the
// store (issue 14) and only [l, m) is fetched. Right after the projection the query rows go to the
// host, host threads attend over [m, s) while the device recomputes, awaits its K,V and attends
// over [0, m) and the new token (keeping its softmax statistics) and the copy queue fetches the
// next layers; after the slot's release (and the refill it allows) the host's partials come up and
// merge into the attention output (log-sum-exp). The query and the partials (b·h and
// b·n_heads·(d + 2) floats) travel on the compute queue: on the one in-order copy queue they would
// wait behind the K,V fetches and serialise the host with the link. With m = s for every sequence
// (the default) none of these ops appear.
//
// Block schedule (throughput mode): the batch splits into G micro-batches of consecutive sequences
// and each layer runs once per micro-batch — project, recompute, attend and finish on the micro-
// batch's rows — while the layer's weights stay loaded. The unit of staging is then one (layer,
// micro-batch) pair: units run layer-major, unit u fetches into slot u % kStagingSlots, and fetches
// run kPrefetchLayers units ahead. With weights streamed from host memory (a device weight share
// below 1) the copy queue loads layer i + 1's weights when layer i starts (after the release of the
// layer that held its weight slot, two slots as for K,V), compute awaits layer i's weights before
// its first micro-batch and releases them after its last. G = 1 and resident weights give exactly
// the latency schedule above.
//
// The schedule is a pure function of the batch layout; it owns no memory and calls `visit` with
// one DecodeOp at a time, in enqueue order.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "kvpr/common/kv_part.h"

namespace kvpr::planner {

inline constexpr std::int64_t kChunkTokens = 64;  // activation rows per recompute chunk (default)
// A chunk no batch reaches: every activation lands before any recompute (the paper's schedule).
inline constexpr std::int64_t kPaperChunk = std::numeric_limits<std::int32_t>::max();
inline constexpr int kStagingSlots = 2;    // layers whose K,V are in flight at once
inline constexpr int kPrefetchLayers = 2;  // the fetch of layer i + 2 follows layer i's attention

enum class OpKind : std::uint8_t {
  prefetch,      // host: the store may start bringing `layer`'s rows into host memory (a hint;
                 // for a store across hosts, a layer before the fetch that locates them)
  await_slot,    // copy: wait until compute has released `slot` (its previous layer attended)
  fetch,         // copy: rows [t0, t0 + n) of `part` of sequence `seq` (one store block) → `row`
  chunk_landed,  // copy: activation rows [.., row) of `slot` have landed: chunk `chunk`
  kv_landed,     // copy: every fetched K,V row of `slot` has landed
  embed,         // compute: token (and position) embeddings of the new tokens
  project,       // compute: attention input and q, k, v of the new tokens
  write_back,    // copy, after compute's projection: the new tokens' activation, K, V → store
  recompute,     // compute, after chunk `chunk` landed: K,V of slot rows [row, row + n)
  await_kv,      // compute: wait for kv_landed of `slot`
  attend,        // compute: attention over recomputed, fetched (or resident) and new rows
  release_slot,  // compute: `slot` may be refilled
  finish_layer,  // compute: output projection and FFN
  head,          // compute: final norm and LM head
  drain,         // host: wait until the copy queue has passed every write-back
  download_query,   // compute, after the projection: the query rows → host
  host_attend,      // host: partial attention over [m, s) of every sequence, after the download
  upload_partials,  // compute, after the host's partials: → device
  merge,            // compute: log-sum-exp merge of the partials into the attention output
  load_weights,     // copy: after the release of its weight slot, `layer`'s streamed weights
  await_weights,    // compute: wait until `layer`'s weights have landed
  release_weights,  // compute: `layer`'s weight slot may be reloaded
};

struct DecodeOp {
  OpKind kind = OpKind::drain;
  std::int32_t layer = -1;
  std::int32_t slot = -1;
  std::int32_t seq = -1;    // fetch: index in the batch
  std::int32_t chunk = -1;  // chunk_landed, recompute
  std::int32_t micro = 0;   // the micro-batch of per-micro-batch ops (fetch: of the slot's unit)
  Part part = Part::act;    // fetch
  std::int64_t t0 = 0;      // fetch: first token
  std::int64_t n = 0;       // fetch: tokens; recompute: rows
  std::int64_t row = 0;  // fetch: first slot row; chunk_landed: rows landed; recompute: first row
  std::int64_t range_t1 = 0;  // fetch: end of the (seq, part) range this block belongs to
  bool range_start = false;   // fetch: first block of its range
};

const char* to_string(OpKind kind);

struct ScheduleShape {
  std::int64_t n_layers = 0;
  std::int64_t block_tokens = 0;  // tokens per store block: one copy per block and part
  std::vector<std::int64_t> s;    // context length of each sequence before the step
  std::vector<std::int64_t> l;    // split of each sequence (clamped to [0, s])
  std::int64_t chunk = kChunkTokens;
  bool resident = false;  // K,V stay on the device: nothing is fetched
  // Host attention from m of each sequence on (clamped to [l, s]); empty: m = s, nothing on the
  // host. Ignored when resident.
  std::vector<std::int64_t> m = {};
  // Sizes of the micro-batches, consecutive sequences each, summing to the batch; empty: one.
  std::vector<std::int64_t> micro = {};
  bool stream_weights = false;  // some of each layer's weights come from host memory
};

class DecodeSchedule {
 public:
  using Visit = std::function<void(const DecodeOp&)>;

  // Fails (naming the value) on an inconsistent shape.
  explicit DecodeSchedule(ScheduleShape shape);

  // The whole step, in enqueue order.
  void run(const Visit& visit) const;
  // Only the fetch and recompute of one layer (micro-batch 0) into slot 0, then await_kv: what
  // the layer's K,V look like to attention (Engine::materialize_kv, tests).
  void run_layer_kv(std::int64_t layer, const Visit& visit) const;

  const ScheduleShape& shape() const { return shape_; }
  std::int64_t b() const { return static_cast<std::int64_t>(shape_.s.size()); }
  std::int64_t l(std::size_t i) const { return l_[i]; }
  std::int64_t m(std::size_t i) const { return m_[i]; }
  std::int64_t host_total() const { return host_total_; }  // K,V rows attended on the host
  // Slot rows: activations of sequence i start at act_row(i), its fetched K,V at kv_row(i), in
  // the slot of its micro-batch's unit.
  std::int64_t act_row(std::size_t i) const { return act_row_[i]; }
  std::int64_t kv_row(std::size_t i) const { return kv_row_[i]; }
  std::int64_t l_total() const { return l_total_; }    // activation rows per layer (all units)
  std::int64_t kv_total() const { return kv_total_; }  // fetched K,V rows per layer (all units)
  std::int64_t slot_act_rows() const { return slot_act_rows_; }  // most of one unit
  std::int64_t slot_kv_rows() const { return slot_kv_rows_; }
  // Micro-batches: g covers sequences [micro_first(g), micro_first(g) + micro_size(g)).
  std::int64_t micro_batches() const { return static_cast<std::int64_t>(micro_.size()); }
  std::int64_t micro_first(std::size_t g) const { return micro_[g].first; }
  std::int64_t micro_size(std::size_t g) const { return micro_[g].size; }
  std::int64_t micro_act_rows(std::size_t g) const {  // activation rows of its units
    return micro_[g].chunk_ends.empty() ? 0 : micro_[g].chunk_ends.back();
  }
  // Position of every activation row of micro-batch g's slot (for RoPE of recomputed K).
  const std::vector<std::int32_t>& act_positions(std::size_t g = 0) const {
    return micro_[g].act_positions;
  }

 private:
  struct Micro {
    std::int64_t first = 0;
    std::int64_t size = 0;
    std::vector<std::int32_t> act_positions;
    std::vector<std::int64_t> chunk_ends;  // rows landed at each chunk mark of its slot
  };
  // Fetch and recompute of unit (layer, g) into `slot`.
  void fetch(std::int64_t layer, std::size_t g, int slot, bool await, const Visit& visit) const;
  void recompute(std::int64_t layer, std::size_t g, int slot, const Visit& visit) const;

  ScheduleShape shape_;
  std::vector<std::int64_t> l_;
  std::vector<std::int64_t> m_;
  std::vector<std::int64_t> act_row_;
  std::vector<std::int64_t> kv_row_;
  std::vector<Micro> micro_;
  std::int64_t l_total_ = 0;
  std::int64_t kv_total_ = 0;
  std::int64_t slot_act_rows_ = 0;
  std::int64_t slot_kv_rows_ = 0;
  std::int64_t host_total_ = 0;
};

}  // namespace kvpr::planner
