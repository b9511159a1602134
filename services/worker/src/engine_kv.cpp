// The K,V ops of the decode step (engine_decode.cpp runs them in the schedule's order): the
// store's prefetch hint, block fetches into the slots, the new token's K,V (and activation)
// projected and written back, K,V recomputed from fetched activations chunk by chunk, attention
// over the slot and the device's own rows; and materialize_kv, which runs the same ops for one
// layer of one sequence to hand back its K,V.
#include <algorithm>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;
using planner::DecodeOp;

void Engine::prefetch(Step& step, const DecodeOp& op) {
  const auto& schedule = *step.schedule;
  const std::int64_t layer = op.layer;
  const auto g = static_cast<std::size_t>(op.micro);
  const auto first = static_cast<std::size_t>(schedule.micro_first(g));
  const auto end = first + static_cast<std::size_t>(schedule.micro_size(g));
  std::vector<kvstore::KvStoreClient::Range> ranges;
  for (std::size_t i = first; i < end; ++i) {
    const std::int64_t l = schedule.l(i);
    const std::int64_t s = step.positions[i];
    if (l > 0) ranges.push_back({step.seqs[i], layer, Part::act, 0, l});
    if (l < s) {
      ranges.push_back({step.seqs[i], layer, Part::k, l, s});
      ranges.push_back({step.seqs[i], layer, Part::v, l, s});
    }
  }
  store_.prefetch(ranges);
}

void Engine::fetch_block(Step& step, const DecodeOp& op) {
  const ModelConfig& c = model_.config();
  const auto& schedule = *step.schedule;
  Slot& sl = slot(static_cast<std::size_t>(op.slot));
  if (step.tracer && !sl.fetch_began) sl.fetch_began = backend_.record(Queue::copy);
  if (op.range_start) {
    step.spans = store_.locate(step.seqs[static_cast<std::size_t>(op.seq)], op.layer, op.part,
                               op.t0, op.range_t1);
    step.next_span = 0;
  }
  if (step.next_span >= step.spans.size() || step.spans[step.next_span].t0 != op.t0 ||
      step.spans[step.next_span].n_tokens != op.n) {
    fail("decode: the store's blocks of sequence ", step.seqs[static_cast<std::size_t>(op.seq)],
         " do not match the schedule's block of tokens [", op.t0, ", ", op.t0 + op.n,
         ") (block_tokens ", store_.shape().block_tokens, ")");
  }
  const kvstore::HostSpan& span = step.spans[step.next_span++];
  const DType dt = backend_.compute_dtype();
  Tensor dst;
  if (op.part == Part::act) {
    dst = sl.act->tensor(dt, std::max<std::int64_t>(schedule.slot_act_rows(), 1), c.h);
  } else {
    const auto& buffer = op.part == Part::k ? sl.fk : sl.fv;
    dst = buffer->tensor(dt, std::max<std::int64_t>(schedule.slot_kv_rows(), 1), c.h_kv());
  }
  backend_.copy_to_device(Queue::copy, dst.rows_slice(op.row, op.n), span.data,
                          store_.shape().dtype);
}

void Engine::project_new_tokens(Step& step, const DecodeOp& op) {
  const ModelConfig& c = model_.config();
  const std::int64_t layer = op.layer;
  const auto b = static_cast<std::int64_t>(step.seqs.size());
  const auto wb = kWriteback + 3 * static_cast<std::size_t>(layer);
  step.xn = scratch(wb, b, c.h);  // a layer's write-back rows of every micro-batch
  step.k_new = scratch(wb + 1, b, c.h_kv());
  step.v_new = scratch(wb + 2, b, c.h_kv());
  const auto g = static_cast<std::size_t>(op.micro);
  const std::int64_t r0 = step.schedule->micro_first(g);
  const std::int64_t n = step.schedule->micro_size(g);
  const DeviceLayer& w = weights_.layer(layer);
  attention_input(w, step.x.rows_slice(r0, n), step.xn.rows_slice(r0, n));
  qkv(w, step.xn.rows_slice(r0, n),
      std::span<const std::int32_t>(step.positions)
          .subspan(static_cast<std::size_t>(r0), static_cast<std::size_t>(n)),
      step.q.rows_slice(r0, n), step.k_new.rows_slice(r0, n), step.v_new.rows_slice(r0, n));
}

void Engine::write_back(Step& step, const DecodeOp& op) {
  // The copy queue reads the new rows only after the compute queue has written them.
  backend_.wait(Queue::copy, backend_.record(Queue::compute));
  const std::int64_t layer = op.layer;
  const auto g = static_cast<std::size_t>(op.micro);
  const auto first = static_cast<std::size_t>(step.schedule->micro_first(g));
  const auto end = first + static_cast<std::size_t>(step.schedule->micro_size(g));
  auto begin = step.tracer ? step.tracer->mark(Queue::copy) : nullptr;
  for (std::size_t i = first; i < end; ++i) {
    const auto row = static_cast<std::int64_t>(i);
    const SeqHandle seq = step.seqs[i];
    const std::int64_t s = step.positions[i];
    write_rows(seq, layer, Part::act, s, step.xn.rows_slice(row, 1), Queue::copy);
    write_rows(seq, layer, Part::k, s, step.k_new.rows_slice(row, 1), Queue::copy);
    write_rows(seq, layer, Part::v, s, step.v_new.rows_slice(row, 1), Queue::copy);
  }
  if (step.tracer) {
    step.tracer->add("write_back", Queue::copy, static_cast<std::int32_t>(layer), -1, begin,
                     step.tracer->mark(Queue::copy));
  }
}

void Engine::recompute(Step& step, const DecodeOp& op) {
  const ModelConfig& c = model_.config();
  const auto& schedule = *step.schedule;
  Slot& sl = slot(static_cast<std::size_t>(op.slot));
  {
    // Recompute reads a chunk's activations only after the copy queue has landed them.
    Clock idle(step.times.idle);
    backend_.wait(Queue::compute, sl.chunks.at(static_cast<std::size_t>(op.chunk)));
  }
  auto begin = step.tracer ? step.tracer->mark(Queue::compute) : nullptr;
  {
    Clock busy(step.times.recompute);
    const DType dt = backend_.compute_dtype();
    const std::int64_t rows = std::max<std::int64_t>(schedule.slot_act_rows(), 1);
    const Tensor act = sl.act->tensor(dt, rows, c.h);
    const Tensor rk = sl.rk->tensor(dt, rows, c.h_kv());
    const Tensor rv = sl.rv->tensor(dt, rows, c.h_kv());
    const std::span<const std::int32_t> positions(
        schedule.act_positions(static_cast<std::size_t>(op.micro)).data() + op.row,
        static_cast<std::size_t>(op.n));
    project_kv(weights_.layer(op.layer), act.rows_slice(op.row, op.n), positions,
               rk.rows_slice(op.row, op.n), rv.rows_slice(op.row, op.n));
  }
  if (step.tracer) {
    step.tracer->add("recompute", Queue::compute, op.layer, op.chunk, begin,
                     step.tracer->mark(Queue::compute));
  }
}

void Engine::attend(Step& step, const DecodeOp& op) {
  const ModelConfig& c = model_.config();
  const DType dt = backend_.compute_dtype();
  const auto& schedule = *step.schedule;
  const std::int64_t layer = op.layer;
  const int slot_index = op.slot;
  const auto g = static_cast<std::size_t>(op.micro);
  const std::int64_t r0 = schedule.micro_first(g);
  const std::int64_t n = schedule.micro_size(g);
  step.segments.clear();
  for (auto u = static_cast<std::size_t>(r0); u < static_cast<std::size_t>(r0 + n); ++u) {
    const auto i = static_cast<std::int64_t>(u) - r0;  // the query's row within the micro-batch
    const Tensor k_new = step.k_new.rows_slice(r0 + i, 1);
    const Tensor v_new = step.v_new.rows_slice(r0 + i, 1);
    if (step.resident) {
      resident_append(step.seqs[u], layer, k_new, v_new);
      const auto& L = resident_[step.seqs[u]]->layers[static_cast<std::size_t>(layer)];
      step.segments.push_back(
          {i, L.k->tensor(dt, L.length, c.h_kv()), L.v->tensor(dt, L.length, c.h_kv())});
      continue;
    }
    const Slot& sl = slot(static_cast<std::size_t>(slot_index));
    const std::int64_t l = schedule.l(u);
    if (l > 0) {
      const std::int64_t rows = std::max<std::int64_t>(schedule.slot_act_rows(), 1);
      step.segments.push_back(
          {i, sl.rk->tensor(dt, rows, c.h_kv()).rows_slice(schedule.act_row(u), l),
           sl.rv->tensor(dt, rows, c.h_kv()).rows_slice(schedule.act_row(u), l)});
    }
    const std::int64_t fetched = schedule.m(u) - l;
    if (fetched > 0) {
      const std::int64_t rows = std::max<std::int64_t>(schedule.slot_kv_rows(), 1);
      step.segments.push_back(
          {i, sl.fk->tensor(dt, rows, c.h_kv()).rows_slice(schedule.kv_row(u), fetched),
           sl.fv->tensor(dt, rows, c.h_kv()).rows_slice(schedule.kv_row(u), fetched)});
    }
    step.segments.push_back({i, k_new, v_new});
  }
  const Tensor stats = step.host ? step.stats.rows_slice(r0, n) : Tensor{};
  backend_.attention(step.q.rows_slice(r0, n), step.segments, step.attn_shape,
                     step.attn.rows_slice(r0, n), step.host ? &stats : nullptr);
}

void Engine::materialize_kv(SeqHandle seq, std::int64_t layer, std::int64_t l,
                            std::vector<float>& k, std::vector<float>& v) {
  const ModelConfig& c = model_.config();
  if (layer < 0 || layer >= c.n_layers) fail("materialize_kv: layer ", layer, " out of range");
  const std::int64_t s = store_.length(seq);
  Step step;
  step.seqs = {seq};
  step.positions = {static_cast<std::int32_t>(s)};
  step.schedule.emplace(planner::ScheduleShape{c.n_layers,
                                               store_.shape().block_tokens,
                                               {s},
                                               {std::clamp<std::int64_t>(l, 0, s)},
                                               planner::kChunkTokens,
                                               false,
                                               {}});
  const auto& schedule = *step.schedule;
  size_slots(schedule);
  try {
    weights_.load(layer);
    weights_.await(layer);
    schedule.run_layer_kv(layer, [&](const DecodeOp& op) { execute(step, op); });
    weights_.release(layer);
  } catch (...) {
    try {
      backend_.synchronize();  // nothing still reads the slots
    } catch (...) {            // the first error is the one to report
    }
    weights_.reset();
    throw;
  }
  Slot& sl = slot(0);
  const DType dt = backend_.compute_dtype();
  const auto row = static_cast<std::size_t>(c.h_kv());
  k.assign(static_cast<std::size_t>(s) * row, 0.0f);
  v.assign(static_cast<std::size_t>(s) * row, 0.0f);
  const std::int64_t l_total = schedule.l_total();  // one sequence: the slot's rows
  const std::int64_t kv_total = schedule.kv_total();
  if (l_total > 0) {
    backend_.copy_to_host(Queue::compute, k.data(), DType::f32,
                          sl.rk->tensor(dt, l_total, c.h_kv()));
    backend_.copy_to_host(Queue::compute, v.data(), DType::f32,
                          sl.rv->tensor(dt, l_total, c.h_kv()));
  }
  if (kv_total > 0) {
    const auto off = static_cast<std::size_t>(l_total) * row;
    backend_.copy_to_host(Queue::compute, k.data() + off, DType::f32,
                          sl.fk->tensor(dt, kv_total, c.h_kv()));
    backend_.copy_to_host(Queue::compute, v.data() + off, DType::f32,
                          sl.fv->tensor(dt, kv_total, c.h_kv()));
  }
  backend_.synchronize();
  weights_.reset();
}

}  // namespace kvpr::worker
