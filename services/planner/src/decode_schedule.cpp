#include "kvpr/planner/decode_schedule.h"

#include <algorithm>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

// Calls f(t, n) for each store block that rows [t0, t1) touch: blocks start at multiples of
// `block` tokens of the sequence.
template <typename F>
void for_each_block(std::int64_t t0, std::int64_t t1, std::int64_t block, F&& f) {
  for (std::int64_t t = t0; t < t1;) {
    const std::int64_t n = std::min(block - t % block, t1 - t);
    f(t, n);
    t += n;
  }
}

}  // namespace

const char* to_string(OpKind kind) {
  switch (kind) {
    case OpKind::prefetch:
      return "prefetch";
    case OpKind::await_slot:
      return "await_slot";
    case OpKind::fetch:
      return "fetch";
    case OpKind::chunk_landed:
      return "chunk_landed";
    case OpKind::kv_landed:
      return "kv_landed";
    case OpKind::embed:
      return "embed";
    case OpKind::project:
      return "project";
    case OpKind::write_back:
      return "write_back";
    case OpKind::recompute:
      return "recompute";
    case OpKind::await_kv:
      return "await_kv";
    case OpKind::attend:
      return "attend";
    case OpKind::release_slot:
      return "release_slot";
    case OpKind::finish_layer:
      return "finish_layer";
    case OpKind::head:
      return "head";
    case OpKind::drain:
      return "drain";
    case OpKind::download_query:
      return "download_query";
    case OpKind::host_attend:
      return "host_attend";
    case OpKind::upload_partials:
      return "upload_partials";
    case OpKind::merge:
      return "merge";
  }
  return "?";
}

DecodeSchedule::DecodeSchedule(ScheduleShape shape) : shape_(std::move(shape)) {
  if (shape_.n_layers <= 0) fail("decode schedule: n_layers ", shape_.n_layers);
  if (shape_.block_tokens <= 0) fail("decode schedule: block_tokens ", shape_.block_tokens);
  if (shape_.chunk <= 0) fail("decode schedule: chunk ", shape_.chunk);
  if (shape_.s.empty()) fail("decode schedule: empty batch");
  if (shape_.l.size() != shape_.s.size()) {
    fail("decode schedule: ", shape_.s.size(), " lengths, ", shape_.l.size(), " splits");
  }
  if (!shape_.m.empty() && shape_.m.size() != shape_.s.size()) {
    fail("decode schedule: ", shape_.s.size(), " lengths, ", shape_.m.size(), " host splits");
  }
  std::int64_t boundary = shape_.chunk;
  for (std::size_t i = 0; i < shape_.s.size(); ++i) {
    const std::int64_t s = shape_.s[i];
    if (s < 0) fail("decode schedule: context length ", s, " of sequence ", i);
    const std::int64_t l = shape_.resident ? 0 : std::clamp<std::int64_t>(shape_.l[i], 0, s);
    l_.push_back(l);
    const std::int64_t m =
        shape_.resident || shape_.m.empty() ? s : std::clamp<std::int64_t>(shape_.m[i], l, s);
    m_.push_back(m);
    host_total_ += s - m;
    act_row_.push_back(l_total_);
    kv_row_.push_back(kv_total_);
    for (std::int64_t t = 0; t < l; ++t) act_positions_.push_back(static_cast<std::int32_t>(t));
    for_each_block(0, l, shape_.block_tokens, [&](std::int64_t, std::int64_t n) {
      l_total_ += n;
      if (l_total_ >= boundary) {
        chunk_ends_.push_back(l_total_);
        boundary = l_total_ + shape_.chunk;
      }
    });
    kv_total_ += shape_.resident ? 0 : m - l;
  }
  if (l_total_ > 0 && (chunk_ends_.empty() || chunk_ends_.back() < l_total_)) {
    chunk_ends_.push_back(l_total_);
  }
}

void DecodeSchedule::fetch(std::int64_t layer, int slot, bool await, const Visit& visit) const {
  DecodeOp op;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = slot;
  if (await) {
    op.kind = OpKind::await_slot;
    visit(op);
  }
  std::size_t chunk = 0;
  std::int64_t landed = 0;
  const auto blocks = [&](std::size_t i, Part part, std::int64_t t0, std::int64_t t1,
                          std::int64_t row) {
    for_each_block(t0, t1, shape_.block_tokens, [&](std::int64_t t, std::int64_t n) {
      DecodeOp f = op;
      f.kind = OpKind::fetch;
      f.seq = static_cast<std::int32_t>(i);
      f.part = part;
      f.t0 = t;
      f.n = n;
      f.row = row + (t - t0);
      f.range_t1 = t1;
      f.range_start = t == t0;
      visit(f);
      if (part != Part::act) return;
      landed += n;
      if (chunk < chunk_ends_.size() && landed == chunk_ends_[chunk]) {
        DecodeOp mark = op;
        mark.kind = OpKind::chunk_landed;
        mark.chunk = static_cast<std::int32_t>(chunk++);
        mark.row = landed;
        visit(mark);
      }
    });
  };
  for (std::size_t i = 0; i < l_.size(); ++i) blocks(i, Part::act, 0, l_[i], act_row_[i]);
  for (std::size_t i = 0; i < l_.size(); ++i) {
    blocks(i, Part::k, l_[i], m_[i], kv_row_[i]);
    blocks(i, Part::v, l_[i], m_[i], kv_row_[i]);
  }
  op.kind = OpKind::kv_landed;
  visit(op);
}

void DecodeSchedule::recompute(std::int64_t layer, int slot, const Visit& visit) const {
  DecodeOp op;
  op.kind = OpKind::recompute;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = slot;
  std::int64_t begin = 0;
  for (std::size_t c = 0; c < chunk_ends_.size(); ++c) {
    op.chunk = static_cast<std::int32_t>(c);
    op.row = begin;
    op.n = chunk_ends_[c] - begin;
    visit(op);
    begin = chunk_ends_[c];
  }
}

void DecodeSchedule::run(const Visit& visit) const {
  const std::int64_t n_layers = shape_.n_layers;
  const auto slot_of = [](std::int64_t layer) { return static_cast<int>(layer % kStagingSlots); };
  const auto simple = [&](OpKind kind, std::int64_t layer, int slot = -1) {
    DecodeOp op;
    op.kind = kind;
    op.layer = static_cast<std::int32_t>(layer);
    op.slot = slot;
    visit(op);
  };
  if (!shape_.resident) {
    for (std::int64_t layer = 0; layer < std::min<std::int64_t>(kPrefetchLayers + 1, n_layers);
         ++layer) {
      simple(OpKind::prefetch, layer);
    }
    for (std::int64_t layer = 0; layer < std::min<std::int64_t>(kPrefetchLayers, n_layers);
         ++layer) {
      fetch(layer, slot_of(layer), false, visit);
    }
  }
  simple(OpKind::embed, -1);
  const bool host = host_total_ > 0;
  for (std::int64_t layer = 0; layer < n_layers; ++layer) {
    const int slot = shape_.resident ? -1 : slot_of(layer);
    simple(OpKind::project, layer);
    if (host) simple(OpKind::download_query, layer);
    simple(OpKind::write_back, layer);
    if (host) simple(OpKind::host_attend, layer);
    if (!shape_.resident) {
      recompute(layer, slot, visit);
      simple(OpKind::await_kv, layer, slot);
    }
    simple(OpKind::attend, layer, slot);
    if (!shape_.resident) {
      simple(OpKind::release_slot, layer, slot);
      if (layer + kPrefetchLayers < n_layers) fetch(layer + kPrefetchLayers, slot, true, visit);
      if (layer + kPrefetchLayers + 1 < n_layers)
        simple(OpKind::prefetch, layer + kPrefetchLayers + 1);
    }
    if (host) {
      simple(OpKind::upload_partials, layer);
      simple(OpKind::merge, layer);
    }
    simple(OpKind::finish_layer, layer);
  }
  simple(OpKind::head, -1);
  simple(OpKind::drain, -1);
}

void DecodeSchedule::run_layer_kv(std::int64_t layer, const Visit& visit) const {
  if (layer < 0 || layer >= shape_.n_layers)
    fail("decode schedule: layer ", layer, " out of range");
  fetch(layer, 0, false, visit);
  recompute(layer, 0, visit);
  DecodeOp op;
  op.kind = OpKind::await_kv;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = 0;
  visit(op);
}

}  // namespace kvpr::planner
