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
};

struct DecodeOp {
  OpKind kind = OpKind::drain;
  std::int32_t layer = -1;
  std::int32_t slot = -1;
  std::int32_t seq = -1;    // fetch: index in the batch
  std::int32_t chunk = -1;  // chunk_landed, recompute
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
};

class DecodeSchedule {
 public:
  using Visit = std::function<void(const DecodeOp&)>;

  // Fails (naming the value) on an inconsistent shape.
  explicit DecodeSchedule(ScheduleShape shape);

  // The whole step, in enqueue order.
  void run(const Visit& visit) const;
  // Only the fetch and recompute of one layer into slot 0, then await_kv: what the layer's K,V
  // look like to attention (Engine::materialize_kv, tests).
  void run_layer_kv(std::int64_t layer, const Visit& visit) const;

  const ScheduleShape& shape() const { return shape_; }
  std::int64_t b() const { return static_cast<std::int64_t>(shape_.s.size()); }
  std::int64_t l(std::size_t i) const { return l_[i]; }
  std::int64_t m(std::size_t i) const { return m_[i]; }
  std::int64_t host_total() const { return host_total_; }  // K,V rows attended on the host
  // Slot rows: activations of sequence i start at act_row(i), its fetched K,V at kv_row(i).
  std::int64_t act_row(std::size_t i) const { return act_row_[i]; }
  std::int64_t kv_row(std::size_t i) const { return kv_row_[i]; }
  std::int64_t l_total() const { return l_total_; }    // activation rows per slot
  std::int64_t kv_total() const { return kv_total_; }  // fetched K,V rows per slot
  // Position of every activation row of a slot (for RoPE of recomputed K).
  const std::vector<std::int32_t>& act_positions() const { return act_positions_; }

 private:
  void fetch(std::int64_t layer, int slot, bool await, const Visit& visit) const;
  void recompute(std::int64_t layer, int slot, const Visit& visit) const;

  ScheduleShape shape_;
  std::vector<std::int64_t> l_;
  std::vector<std::int64_t> m_;
  std::vector<std::int64_t> act_row_;
  std::vector<std::int64_t> kv_row_;
  std::vector<std::int32_t> act_positions_;
  std::vector<std::int64_t> chunk_ends_;  // rows landed at each chunk mark of a slot
  std::int64_t l_total_ = 0;
  std::int64_t kv_total_ = 0;
  std::int64_t host_total_ = 0;
};

}  // namespace kvpr::planner
