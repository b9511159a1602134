// The decode step: the planner's DecodeSchedule (decode_schedule.h, which the step model replays
// to predict this very order of work) executed on the backend's two queues. Every op of the
// schedule maps to one phase below; the queue fences say what each one orders.
#include <algorithm>
#include <cmath>
#include <set>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;
using planner::DecodeOp;
using planner::OpKind;

Engine::Tracer::Tracer(kernels::Backend& backend)
    : backend_(backend), start_(backend.record(Queue::compute)) {}

void Engine::Tracer::add(const char* op, Queue queue, std::int32_t layer, std::int32_t chunk,
                         std::shared_ptr<kernels::Event> begin,
                         std::shared_ptr<kernels::Event> end) {
  pending_.push_back({{op, queue, layer, chunk, 0, 0}, std::move(begin), std::move(end)});
}

std::vector<TraceSpan> Engine::Tracer::finish() {
  std::vector<TraceSpan> spans;
  spans.reserve(pending_.size());
  for (auto& p : pending_) {
    p.span.begin_s = backend_.elapsed_s(start_, p.begin);
    p.span.end_s = backend_.elapsed_s(start_, p.end);
    spans.push_back(p.span);
  }
  pending_.clear();
  return spans;
}

Engine::Slot& Engine::slot(std::size_t index) {
  while (slots_.size() <= index) slots_.push_back(std::make_unique<Slot>());
  return *slots_[index];
}

void Engine::size_slots(const planner::DecodeSchedule& schedule) {
  const ModelConfig& c = model_.config();
  const std::int64_t rows = std::max<std::int64_t>(schedule.slot_act_rows(), 1);
  const std::int64_t kv_rows = std::max<std::int64_t>(schedule.slot_kv_rows(), 1);
  for (std::size_t i = 0; i < planner::kStagingSlots; ++i) {
    Slot& sl = slot(i);
    sl.free.reset();  // the previous step drained: nothing reads the slot any more
    sl.chunks.clear();
    sl.kv_landed.reset();
    sl.fetch_began.reset();
    grown(backend_, sl.act, rows, c.h);
    grown(backend_, sl.rk, rows, c.h_kv());
    grown(backend_, sl.rv, rows, c.h_kv());
    grown(backend_, sl.fk, kv_rows, c.h_kv());
    grown(backend_, sl.fv, kv_rows, c.h_kv());
  }
}

void Engine::begin_step(Step& step, std::span<const SeqHandle> seqs) {
  const ModelConfig& c = model_.config();
  step.seqs.assign(seqs.begin(), seqs.end());
  std::vector<std::int64_t> s;
  for (SeqHandle seq : seqs) {
    const std::int64_t len = store_.length(seq);
    if (len + 1 > c.max_positions) {
      fail("sequence ", seq, " would pass max_position_embeddings ", c.max_positions);
    }
    s.push_back(len);
    step.positions.push_back(static_cast<std::int32_t>(len));
  }
  store_.reserve(seqs, 1);  // all or nothing, before any work

  step.resident = options_.policy == planner::Policy::resident;
  planner::PlanRequest request;
  request.shape = {c.h, c.h_kv(), static_cast<std::int64_t>(size_of(store_.shape().dtype))};
  request.n_layers = c.n_layers;
  request.s = s;
  request.policy = options_.policy;
  request.split = options_.split;
  request.rates = rates_;
  request.host_split = options_.host_split;
  // The node's budget: this worker's share of the host threads (the kvstore gives it out).
  const int host_threads =
      std::clamp(store_.host_threads(std::max(options_.host_threads, 1)), 1, kMaxHostThreads);
  request.host_threads = host_threads;
  step.plan = planner_.plan(request);
  // Micro-batches of consecutive sequences whose sizes differ by at most one.
  const auto b = static_cast<std::int64_t>(seqs.size());
  const std::int64_t g = std::min(options_.micro_batches, b);
  std::vector<std::int64_t> micro;
  for (std::int64_t i = 0; i < g; ++i) micro.push_back(b / g + (i < b % g ? 1 : 0));
  step.schedule.emplace(
      planner::ScheduleShape{c.n_layers, store_.shape().block_tokens, s, step.plan.l,
                             std::max<std::int64_t>(step.plan.chunk, 1), step.resident, step.plan.m,
                             micro, weights_.active()});
  step.host = step.schedule->host_total() > 0;
  if (step.host) {
    if (!host_ || host_->threads() != host_threads) {
      host_ = std::make_unique<HostAttention>(host_threads);
    }
    const std::int64_t partial_cols = c.n_heads * (c.head_dim + 2);
    host_q_.resize(static_cast<std::size_t>(b * c.h));
    host_partials_.resize(static_cast<std::size_t>(b * partial_cols));
    const auto f32 = [&](std::unique_ptr<kernels::DeviceBuffer>& buffer, std::int64_t cols) {
      const auto bytes = static_cast<std::size_t>(b * cols) * sizeof(float);
      if (!buffer || buffer->bytes() < bytes) buffer = backend_.alloc(bytes);
      return buffer->tensor(DType::f32, b, cols);
    };
    step.stats = f32(stats_, 2 * c.n_heads);
    step.partials = f32(partials_, partial_cols);
  }
  if (step.resident) {
    for (SeqHandle seq : seqs) {
      auto it = resident_.find(seq);
      if (it == resident_.end())
        fail("decode: sequence ", seq, " has no resident K,V (prefilled under another policy?)");
      step.resident_before[seq] = it->second->layers.front().length;
    }
  }
}

std::vector<float> Engine::decode(std::span<const SeqHandle> seqs,
                                  std::span<const std::int32_t> tokens) {
  const ModelConfig& c = model_.config();
  const auto b = static_cast<std::int64_t>(seqs.size());
  if (b == 0) fail("decode: empty batch");
  if (tokens.size() != seqs.size()) {
    fail("decode: ", tokens.size(), " tokens for a batch of ", seqs.size(), " sequences");
  }
  if (std::set<SeqHandle>(seqs.begin(), seqs.end()).size() != seqs.size()) {
    fail("decode: a sequence appears twice in one batch");
  }
  last_ = {};
  last_.started = std::chrono::steady_clock::now();
  const auto copy_before = backend_.copy_stats();
  Step step;
  step.tokens = tokens;
  begin_step(step, seqs);
  std::vector<float> out;
  step.logits = &out;
  try {
    if (!step.resident) size_slots(*step.schedule);
    step.x = scratch(kX, b, c.h);
    step.q = scratch(kQ, b, c.h);
    step.attn = scratch(kAttn, b, c.h);
    step.attn_shape = {c.n_heads, c.n_kv_heads, c.head_dim,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
    if (options_.trace) step.tracer.emplace(backend_);
    step.schedule->run([&](const DecodeOp& op) { execute(step, op); });
  } catch (...) {
    try {
      if (host_) host_->wait();  // its threads read the store and host_q_
    } catch (...) {              // the step's own error is the one to report
    }
    try {
      backend_.synchronize();
    } catch (...) {  // the step's own error is the one to report
    }
    weights_.reset();
    for (auto& [seq, len] : step.resident_before) {
      for (auto& L : resident_[seq]->layers) L.length = std::min(L.length, len);
    }
    throw;
  }
  weights_.reset();
  store_.commit(seqs, 1);
  const auto copy_after = backend_.copy_stats();
  step.times.transfer = copy_after.busy_s - copy_before.busy_s;
  step.times.total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - last_.started).count();
  last_.times = step.times;
  const auto& schedule = *step.schedule;
  last_.recompute_tokens = schedule.l_total() * c.n_layers;
  last_.transfer_tokens = schedule.kv_total() * c.n_layers;
  last_.host_tokens = schedule.host_total() * c.n_layers;
  last_.h2d_bytes = copy_after.h2d_bytes - copy_before.h2d_bytes;
  last_.d2h_bytes = copy_after.d2h_bytes - copy_before.d2h_bytes;
  last_.s = schedule.shape().s;
  for (std::int64_t g = 0; g < schedule.micro_batches(); ++g)
    last_.micro.push_back(schedule.micro_size(static_cast<std::size_t>(g)));
  last_.weight_bytes = static_cast<double>(model_.streamed_host_bytes(0));
  if (step.resident) step.plan.l.assign(step.plan.l.size(), 0);
  step.plan.m.resize(seqs.size());  // as executed: m = s where nothing went to the host
  for (std::size_t i = 0; i < seqs.size(); ++i) step.plan.m[i] = schedule.m(i);
  last_.plan = std::move(step.plan);
  if (step.tracer) last_.trace = step.tracer->finish();
  return out;
}

void Engine::execute(Step& step, const DecodeOp& op) {
  Tracer* tracer = step.tracer ? &*step.tracer : nullptr;
  // A compute op, timed into `phase` and traced between two compute-queue events.
  const auto compute = [&](const char* name, double& phase, auto&& work) {
    auto begin = tracer ? tracer->mark(Queue::compute) : nullptr;
    {
      Clock clock(phase);
      work();
    }
    if (tracer)
      tracer->add(name, Queue::compute, op.layer, op.chunk, begin, tracer->mark(Queue::compute));
  };
  switch (op.kind) {
    case OpKind::prefetch:
      return prefetch(step, op);
    case OpKind::await_slot: {
      // The copy queue refills a slot only after compute has attended over what it held.
      Slot& sl = slot(static_cast<std::size_t>(op.slot));
      if (sl.free) backend_.wait(Queue::copy, sl.free);
      return;
    }
    case OpKind::fetch:
      return fetch_block(step, op);
    case OpKind::chunk_landed: {
      Slot& sl = slot(static_cast<std::size_t>(op.slot));
      if (op.chunk == 0) sl.chunks.clear();
      sl.chunks.push_back(backend_.record(Queue::copy));
      if (tracer) {
        tracer->add("fetch_act", Queue::copy, op.layer, op.chunk,
                    op.chunk == 0 ? sl.fetch_began : sl.chunks[sl.chunks.size() - 2],
                    sl.chunks.back());
      }
      return;
    }
    case OpKind::kv_landed: {
      Slot& sl = slot(static_cast<std::size_t>(op.slot));
      sl.kv_landed = backend_.record(Queue::copy);
      if (tracer && sl.fetch_began) {
        const bool any_act = step.schedule->micro_act_rows(static_cast<std::size_t>(op.micro)) > 0;
        tracer->add("fetch_kv", Queue::copy, op.layer, -1,
                    any_act ? sl.chunks.back() : sl.fetch_began, sl.kv_landed);
      }
      sl.fetch_began.reset();
      return;
    }
    case OpKind::embed:
      return compute("embed", step.times.other,
                     [&] { embed(step.tokens, step.positions, step.x); });
    case OpKind::project:
      return compute("project", step.times.other, [&] { project_new_tokens(step, op); });
    case OpKind::write_back:
      return write_back(step, op);
    case OpKind::recompute:
      return recompute(step, op);
    case OpKind::await_kv: {
      // Attention reads the fetched K,V only after the copy queue has landed them.
      Clock idle(step.times.idle);
      backend_.wait(Queue::compute, slot(static_cast<std::size_t>(op.slot)).kv_landed);
      return;
    }
    case OpKind::attend:
      return compute("attend", step.times.attention, [&] { attend(step, op); });
    case OpKind::release_slot:
      // The fetch of layer + kPrefetchLayers into this slot waits for this event (await_slot).
      slot(static_cast<std::size_t>(op.slot)).free = backend_.record(Queue::compute);
      return;
    case OpKind::finish_layer:
      return compute("finish_layer", step.times.other, [&] {
        const auto g = static_cast<std::size_t>(op.micro);
        const std::int64_t r0 = step.schedule->micro_first(g);
        const std::int64_t n = step.schedule->micro_size(g);
        attn_out_and_ffn(weights_.layer(op.layer), step.attn.rows_slice(r0, n),
                         step.x.rows_slice(r0, n));
      });
    case OpKind::head:
      return compute("head", step.times.other, [&] { logits(step.x, *step.logits); });
    case OpKind::drain: {
      Clock idle(step.times.idle);
      backend_.synchronize();  // the write-backs have landed in host memory
      return;
    }
    case OpKind::download_query:
      return download_query(step, op);
    case OpKind::host_attend:
      return host_attend(step, op);
    case OpKind::upload_partials:
      return upload_partials(step, op);
    case OpKind::merge:
      return compute("merge", step.times.attention, [&] { merge(step, op); });
    case OpKind::load_weights: {
      auto begin = tracer ? tracer->mark(Queue::copy) : nullptr;
      weights_.load(op.layer);
      if (tracer)
        tracer->add("load_weights", Queue::copy, op.layer, -1, begin, tracer->mark(Queue::copy));
      return;
    }
    case OpKind::await_weights: {
      Clock idle(step.times.idle);
      weights_.await(op.layer);
      return;
    }
    case OpKind::release_weights:
      weights_.release(op.layer);
      return;
  }
}

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
