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
    case OpKind::load_weights:
      return "load_weights";
    case OpKind::await_weights:
      return "await_weights";
    case OpKind::release_weights:
      return "release_weights";
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
  const auto b = static_cast<std::int64_t>(shape_.s.size());
  std::vector<std::int64_t> sizes =
      shape_.micro.empty() ? std::vector<std::int64_t>{b} : shape_.micro;
  std::int64_t first = 0;
  for (const std::int64_t n : sizes) {
    if (n <= 0) fail("decode schedule: a micro-batch of ", n, " sequences");
    micro_.push_back({first, n, {}, {}});
    first += n;
  }
  if (first != b)
    fail("decode schedule: micro-batches of ", first, " sequences for a batch of ", b);
  for (Micro& g : micro_) {
    std::int64_t act_rows = 0;
    std::int64_t kv_rows = 0;
    std::int64_t boundary = shape_.chunk;
    for (std::int64_t u = g.first; u < g.first + g.size; ++u) {
      const auto i = static_cast<std::size_t>(u);
      const std::int64_t s = shape_.s[i];
      if (s < 0) fail("decode schedule: context length ", s, " of sequence ", i);
      const std::int64_t l = shape_.resident ? 0 : std::clamp<std::int64_t>(shape_.l[i], 0, s);
      l_.push_back(l);
      const std::int64_t m =
          shape_.resident || shape_.m.empty() ? s : std::clamp<std::int64_t>(shape_.m[i], l, s);
      m_.push_back(m);
      host_total_ += s - m;
      act_row_.push_back(act_rows);
      kv_row_.push_back(kv_rows);
      for (std::int64_t t = 0; t < l; ++t) g.act_positions.push_back(static_cast<std::int32_t>(t));
      for_each_block(0, l, shape_.block_tokens, [&](std::int64_t, std::int64_t n) {
        act_rows += n;
        if (act_rows >= boundary) {
          g.chunk_ends.push_back(act_rows);
          boundary = act_rows + shape_.chunk;
        }
      });
      kv_rows += shape_.resident ? 0 : m - l;
    }
    if (act_rows > 0 && (g.chunk_ends.empty() || g.chunk_ends.back() < act_rows)) {
      g.chunk_ends.push_back(act_rows);
    }
    l_total_ += act_rows;
    kv_total_ += kv_rows;
    slot_act_rows_ = std::max(slot_act_rows_, act_rows);
    slot_kv_rows_ = std::max(slot_kv_rows_, kv_rows);
  }
}

void DecodeSchedule::fetch(std::int64_t layer, std::size_t g, int slot, bool await,
                           const Visit& visit) const {
  const Micro& micro = micro_[g];
  DecodeOp op;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = slot;
  op.micro = static_cast<std::int32_t>(g);
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
      if (chunk < micro.chunk_ends.size() && landed == micro.chunk_ends[chunk]) {
        DecodeOp mark = op;
        mark.kind = OpKind::chunk_landed;
        mark.chunk = static_cast<std::int32_t>(chunk++);
        mark.row = landed;
        visit(mark);
      }
    });
  };
  const auto begin = static_cast<std::size_t>(micro.first);
  const auto end = static_cast<std::size_t>(micro.first + micro.size);
  for (std::size_t i = begin; i < end; ++i) blocks(i, Part::act, 0, l_[i], act_row_[i]);
  for (std::size_t i = begin; i < end; ++i) {
    blocks(i, Part::k, l_[i], m_[i], kv_row_[i]);
    blocks(i, Part::v, l_[i], m_[i], kv_row_[i]);
  }
  op.kind = OpKind::kv_landed;
  visit(op);
}

void DecodeSchedule::recompute(std::int64_t layer, std::size_t g, int slot,
                               const Visit& visit) const {
  DecodeOp op;
  op.kind = OpKind::recompute;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = slot;
  op.micro = static_cast<std::int32_t>(g);
  std::int64_t begin = 0;
  const auto& ends = micro_[g].chunk_ends;
  for (std::size_t c = 0; c < ends.size(); ++c) {
    op.chunk = static_cast<std::int32_t>(c);
    op.row = begin;
    op.n = ends[c] - begin;
    visit(op);
    begin = ends[c];
  }
}

void DecodeSchedule::run(const Visit& visit) const {
  const std::int64_t n_layers = shape_.n_layers;
  const auto n_micro = static_cast<std::int64_t>(micro_.size());
  const std::int64_t units = n_layers * n_micro;  // (layer, micro-batch), layer-major
  const auto slot_of = [](std::int64_t unit) { return static_cast<int>(unit % kStagingSlots); };
  const auto layer_of = [&](std::int64_t unit) { return unit / n_micro; };
  const auto micro_of = [&](std::int64_t unit) { return static_cast<std::size_t>(unit % n_micro); };
  const auto simple = [&](OpKind kind, std::int64_t layer, int slot = -1, std::int64_t g = 0) {
    DecodeOp op;
    op.kind = kind;
    op.layer = static_cast<std::int32_t>(layer);
    op.slot = slot;
    op.micro = static_cast<std::int32_t>(g);
    visit(op);
  };
  const auto prefetch = [&](std::int64_t unit) {
    simple(OpKind::prefetch, layer_of(unit), -1, static_cast<std::int64_t>(micro_of(unit)));
  };
  const auto fetch_unit = [&](std::int64_t unit, bool await) {
    fetch(layer_of(unit), micro_of(unit), slot_of(unit), await, visit);
  };
  if (shape_.stream_weights) simple(OpKind::load_weights, 0);
  if (!shape_.resident) {
    for (std::int64_t u = 0; u < std::min<std::int64_t>(kPrefetchLayers + 1, units); ++u)
      prefetch(u);
    for (std::int64_t u = 0; u < std::min<std::int64_t>(kPrefetchLayers, units); ++u)
      fetch_unit(u, false);
  }
  simple(OpKind::embed, -1);
  const bool host = host_total_ > 0;
  for (std::int64_t layer = 0; layer < n_layers; ++layer) {
    if (shape_.stream_weights) {
      if (layer + 1 < n_layers) simple(OpKind::load_weights, layer + 1);
      simple(OpKind::await_weights, layer);
    }
    for (std::int64_t g = 0; g < n_micro; ++g) {
      const std::int64_t unit = layer * n_micro + g;
      const int slot = shape_.resident ? -1 : slot_of(unit);
      simple(OpKind::project, layer, -1, g);
      if (host) simple(OpKind::download_query, layer, -1, g);
      simple(OpKind::write_back, layer, -1, g);
      if (host) simple(OpKind::host_attend, layer, -1, g);
      if (!shape_.resident) {
        recompute(layer, static_cast<std::size_t>(g), slot, visit);
        simple(OpKind::await_kv, layer, slot, g);
      }
      simple(OpKind::attend, layer, slot, g);
      if (!shape_.resident) {
        simple(OpKind::release_slot, layer, slot, g);
        if (unit + kPrefetchLayers < units) fetch_unit(unit + kPrefetchLayers, true);
        if (unit + kPrefetchLayers + 1 < units) prefetch(unit + kPrefetchLayers + 1);
      }
      if (host) {
        simple(OpKind::upload_partials, layer, -1, g);
        simple(OpKind::merge, layer, -1, g);
      }
      simple(OpKind::finish_layer, layer, -1, g);
    }
    if (shape_.stream_weights) simple(OpKind::release_weights, layer);
  }
  simple(OpKind::head, -1);
  simple(OpKind::drain, -1);
}

void DecodeSchedule::run_layer_kv(std::int64_t layer, const Visit& visit) const {
  if (layer < 0 || layer >= shape_.n_layers)
    fail("decode schedule: layer ", layer, " out of range");
  fetch(layer, 0, 0, false, visit);
  recompute(layer, 0, 0, visit);
  DecodeOp op;
  op.kind = OpKind::await_kv;
  op.layer = static_cast<std::int32_t>(layer);
  op.slot = 0;
  visit(op);
}

}  // namespace kvpr::planner
