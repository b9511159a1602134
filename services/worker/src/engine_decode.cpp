// The decode step. Per layer, the copy queue brings the activations of tokens [0, l) in chunks and
// then the K,V of tokens [l, s) into one of two staging slots, while the compute queue works on the
// previous layer; the compute queue recomputes K,V of each activation chunk as soon as it lands
// (events order the queues), attends over recomputed, fetched and new-token segments, and hands
// the new token's activation and K,V to the copy queue to be written back. Slots are reused every
// other layer, so the fetch of layer i+2 waits only for layer i's attention to finish with it.
#include <algorithm>
#include <cmath>
#include <set>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;
using kvstore::Part;

Engine::Slot& Engine::slot(std::size_t index) {
  while (slots_.size() <= index) slots_.push_back(std::make_unique<Slot>());
  return *slots_[index];
}

void Engine::enqueue_fetch(StepContext& ctx, std::int64_t layer, Slot& sl) {
  const ModelConfig& c = model_.config();
  const DType dtype = store_.shape().dtype;
  const DType dt = backend_.compute_dtype();
  if (sl.free) backend_.wait(Queue::copy, sl.free);
  sl.chunks.clear();
  Tensor act = sl.act->tensor(dt, std::max<std::int64_t>(ctx.l_total, 1), c.h);
  std::int64_t rows_done = 0;
  std::int64_t next_boundary = ctx.chunk;
  for (std::size_t i = 0; i < ctx.seqs.size(); ++i) {
    if (ctx.l[i] == 0) continue;
    for (const auto& span : store_.locate(ctx.seqs[i], layer, Part::act, 0, ctx.l[i])) {
      backend_.copy_to_device(Queue::copy, act.rows_slice(ctx.act_off[i] + span.t0, span.n_tokens),
                              span.data, dtype);
      rows_done += span.n_tokens;
      if (rows_done >= next_boundary) {
        sl.chunks.push_back({rows_done, backend_.record(Queue::copy)});
        next_boundary = rows_done + ctx.chunk;
      }
    }
  }
  if (rows_done > 0 && (sl.chunks.empty() || sl.chunks.back().rows_end < rows_done)) {
    sl.chunks.push_back({rows_done, backend_.record(Queue::copy)});
  }
  const std::int64_t kv_rows = std::max<std::int64_t>(ctx.kv_total, 1);
  Tensor fk = sl.fk->tensor(dt, kv_rows, c.h_kv());
  Tensor fv = sl.fv->tensor(dt, kv_rows, c.h_kv());
  for (std::size_t i = 0; i < ctx.seqs.size(); ++i) {
    if (ctx.l[i] == ctx.s[i]) continue;
    for (Part part : {Part::k, Part::v}) {
      Tensor dst = part == Part::k ? fk : fv;
      for (const auto& span : store_.locate(ctx.seqs[i], layer, part, ctx.l[i], ctx.s[i])) {
        const std::int64_t row = ctx.kv_off[i] + (span.t0 - ctx.l[i]);
        backend_.copy_to_device(Queue::copy, dst.rows_slice(row, span.n_tokens), span.data, dtype);
      }
    }
  }
  sl.kv_landed = backend_.record(Queue::copy);
}

void Engine::recompute_chunks(StepContext& ctx, std::int64_t layer, Slot& sl) {
  const ModelConfig& c = model_.config();
  const DeviceLayer& w = model_.layer(layer);
  const DType dt = backend_.compute_dtype();
  const std::int64_t rows = std::max<std::int64_t>(ctx.l_total, 1);
  Tensor act = sl.act->tensor(dt, rows, c.h);
  Tensor rk = sl.rk->tensor(dt, rows, c.h_kv());
  Tensor rv = sl.rv->tensor(dt, rows, c.h_kv());
  std::int64_t begin = 0;
  for (const auto& chunk : sl.chunks) {
    {
      Clock idle(ctx.times->idle);
      backend_.wait(Queue::compute, chunk.landed);
    }
    Clock busy(ctx.times->recompute);
    const std::int64_t n = chunk.rows_end - begin;
    Tensor a = act.rows_slice(begin, n);
    Tensor k = rk.rows_slice(begin, n);
    backend_.gemm(a, w.k.w, w.k.bias(), k);
    backend_.gemm(a, w.v.w, w.v.bias(), rv.rows_slice(begin, n));
    if (c.arch == Arch::llama) {
      const std::span<const std::int32_t> pos(ctx.act_positions.data() + begin,
                                              static_cast<std::size_t>(n));
      backend_.rope(k, pos, c.n_kv_heads, c.head_dim, c.rope_theta);
    }
    begin = chunk.rows_end;
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
  const auto wall_start = std::chrono::steady_clock::now();
  const auto copy_before = backend_.copy_stats();
  StepContext ctx;
  PhaseTimes times;
  ctx.times = &times;
  ctx.seqs.assign(seqs.begin(), seqs.end());
  std::vector<std::int32_t> positions;
  for (SeqHandle seq : seqs) {
    const std::int64_t s = store_.length(seq);
    if (s + 1 > c.max_positions) {
      fail("sequence ", seq, " would pass max_position_embeddings ", c.max_positions);
    }
    ctx.s.push_back(s);
    positions.push_back(static_cast<std::int32_t>(s));
  }
  for (SeqHandle seq : seqs) store_.reserve(seq, 1);  // all or nothing before any work

  const bool resident = options_.policy == planner::Policy::resident;
  planner::PlanRequest request;
  request.shape = {c.h, c.h_kv(), static_cast<std::int64_t>(size_of(store_.shape().dtype))};
  request.n_layers = c.n_layers;
  request.s = ctx.s;
  request.policy = options_.policy;
  request.split = options_.split;
  request.rates = rates_;
  planner::Plan plan = planner_.plan(request);
  ctx.l = resident ? ctx.s : plan.l;
  ctx.chunk = std::max<std::int64_t>(plan.chunk, 1);
  for (std::size_t i = 0; i < ctx.seqs.size(); ++i) {
    ctx.act_off.push_back(ctx.l_total);
    ctx.kv_off.push_back(ctx.kv_total);
    for (std::int64_t t = 0; t < ctx.l[i]; ++t)
      ctx.act_positions.push_back(static_cast<std::int32_t>(t));
    ctx.l_total += ctx.l[i];
    ctx.kv_total += ctx.s[i] - ctx.l[i];
  }

  std::map<SeqHandle, std::int64_t> resident_before;
  if (resident) {
    for (SeqHandle seq : seqs) {
      auto it = resident_.find(seq);
      if (it == resident_.end())
        fail("decode: sequence ", seq, " has no resident K,V (prefilled under another policy?)");
      resident_before[seq] = it->second->layers.front().length;
    }
  }
  std::vector<float> out;
  try {
    const DType dt = backend_.compute_dtype();
    if (!resident) {
      for (std::size_t i = 0; i < 2; ++i) {
        Slot& sl = slot(i);
        sl.free.reset();
        grown(backend_, sl.act, std::max<std::int64_t>(ctx.l_total, 1), c.h);
        grown(backend_, sl.rk, std::max<std::int64_t>(ctx.l_total, 1), c.h_kv());
        grown(backend_, sl.rv, std::max<std::int64_t>(ctx.l_total, 1), c.h_kv());
        grown(backend_, sl.fk, std::max<std::int64_t>(ctx.kv_total, 1), c.h_kv());
        grown(backend_, sl.fv, std::max<std::int64_t>(ctx.kv_total, 1), c.h_kv());
      }
      for (std::int64_t layer = 0; layer < std::min<std::int64_t>(2, c.n_layers); ++layer) {
        enqueue_fetch(ctx, layer, slot(static_cast<std::size_t>(layer)));
      }
    }
    Tensor x = scratch(kX, b, c.h);
    Tensor q = scratch(kQ, b, c.h);
    Tensor attn = scratch(kAttn, b, c.h);
    {
      Clock other(times.other);
      embed(tokens, positions, x);
    }
    const kernels::AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                                   1.0f / std::sqrt(static_cast<float>(c.head_dim))};
    std::vector<kernels::AttnSegment> segments;
    for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
      const DeviceLayer& w = model_.layer(layer);
      const auto wb = kWriteback + 3 * static_cast<std::size_t>(layer);
      Tensor xn = scratch(wb, b, c.h);
      Tensor k_new = scratch(wb + 1, b, c.h_kv());
      Tensor v_new = scratch(wb + 2, b, c.h_kv());
      {
        Clock other(times.other);
        attention_input(w, x, xn);
        qkv(w, xn, positions, q, k_new, v_new);
      }
      backend_.wait(Queue::copy, backend_.record(Queue::compute));
      for (std::int64_t i = 0; i < b; ++i) {
        const auto seq = ctx.seqs[static_cast<std::size_t>(i)];
        const auto s = ctx.s[static_cast<std::size_t>(i)];
        write_rows(seq, layer, Part::act, s, xn.rows_slice(i, 1), Queue::copy);
        write_rows(seq, layer, Part::k, s, k_new.rows_slice(i, 1), Queue::copy);
        write_rows(seq, layer, Part::v, s, v_new.rows_slice(i, 1), Queue::copy);
      }
      segments.clear();
      Slot* sl = nullptr;
      if (resident) {
        for (std::int64_t i = 0; i < b; ++i) {
          const auto seq = ctx.seqs[static_cast<std::size_t>(i)];
          resident_append(seq, layer, k_new.rows_slice(i, 1), v_new.rows_slice(i, 1));
          const auto& L = resident_[seq]->layers[static_cast<std::size_t>(layer)];
          segments.push_back(
              {i, L.k->tensor(dt, L.length, c.h_kv()), L.v->tensor(dt, L.length, c.h_kv())});
        }
      } else {
        sl = &slot(static_cast<std::size_t>(layer % 2));
        recompute_chunks(ctx, layer, *sl);
        {
          Clock idle(times.idle);
          backend_.wait(Queue::compute, sl->kv_landed);
        }
        const std::int64_t rows = std::max<std::int64_t>(ctx.l_total, 1);
        const std::int64_t kv_rows = std::max<std::int64_t>(ctx.kv_total, 1);
        Tensor rk = sl->rk->tensor(dt, rows, c.h_kv());
        Tensor rv = sl->rv->tensor(dt, rows, c.h_kv());
        Tensor fk = sl->fk->tensor(dt, kv_rows, c.h_kv());
        Tensor fv = sl->fv->tensor(dt, kv_rows, c.h_kv());
        for (std::int64_t i = 0; i < b; ++i) {
          const auto u = static_cast<std::size_t>(i);
          if (ctx.l[u] > 0) {
            segments.push_back({i, rk.rows_slice(ctx.act_off[u], ctx.l[u]),
                                rv.rows_slice(ctx.act_off[u], ctx.l[u])});
          }
          const std::int64_t fetched = ctx.s[u] - ctx.l[u];
          if (fetched > 0) {
            segments.push_back(
                {i, fk.rows_slice(ctx.kv_off[u], fetched), fv.rows_slice(ctx.kv_off[u], fetched)});
          }
          segments.push_back({i, k_new.rows_slice(i, 1), v_new.rows_slice(i, 1)});
        }
      }
      {
        Clock attention(times.attention);
        backend_.attention(q, segments, shape, attn);
      }
      if (sl != nullptr) {
        sl->free = backend_.record(Queue::compute);
        if (layer + 2 < c.n_layers) enqueue_fetch(ctx, layer + 2, *sl);
      }
      Clock other(times.other);
      attn_out_and_ffn(w, attn, x);
    }
    {
      Clock other(times.other);
      logits(x, out);
    }
    {
      Clock idle(times.idle);
      backend_.synchronize();  // the write-backs have landed in host memory
    }
  } catch (...) {
    try {
      backend_.synchronize();
    } catch (...) {  // the step's own error is the one to report
    }
    for (auto& [seq, len] : resident_before) {
      for (auto& L : resident_[seq]->layers) L.length = std::min(L.length, len);
    }
    throw;
  }
  for (SeqHandle seq : seqs) store_.commit(seq, 1);

  const auto copy_after = backend_.copy_stats();
  times.transfer = copy_after.busy_s - copy_before.busy_s;
  times.total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  last_.times = times;
  last_.recompute_tokens = resident ? 0 : ctx.l_total * c.n_layers;
  last_.transfer_tokens = resident ? 0 : ctx.kv_total * c.n_layers;
  last_.h2d_bytes = copy_after.h2d_bytes - copy_before.h2d_bytes;
  last_.d2h_bytes = copy_after.d2h_bytes - copy_before.d2h_bytes;
  if (resident) plan.l.assign(plan.l.size(), 0);
  last_.plan = std::move(plan);
  return out;
}

void Engine::materialize_kv(SeqHandle seq, std::int64_t layer, std::int64_t l,
                            std::vector<float>& k, std::vector<float>& v) {
  const ModelConfig& c = model_.config();
  if (layer < 0 || layer >= c.n_layers) fail("materialize_kv: layer ", layer, " out of range");
  StepContext ctx;
  PhaseTimes times;
  ctx.times = &times;
  ctx.seqs = {seq};
  const std::int64_t s = store_.length(seq);
  ctx.s = {s};
  ctx.l = {std::clamp<std::int64_t>(l, 0, s)};
  ctx.act_off = {0};
  ctx.kv_off = {0};
  for (std::int64_t t = 0; t < ctx.l[0]; ++t)
    ctx.act_positions.push_back(static_cast<std::int32_t>(t));
  ctx.l_total = ctx.l[0];
  ctx.kv_total = s - ctx.l[0];
  Slot& sl = slot(0);
  sl.free.reset();
  const std::int64_t rows = std::max<std::int64_t>(ctx.l_total, 1);
  const std::int64_t kv_rows = std::max<std::int64_t>(ctx.kv_total, 1);
  grown(backend_, sl.act, rows, c.h);
  Tensor rk = grown(backend_, sl.rk, rows, c.h_kv());
  Tensor rv = grown(backend_, sl.rv, rows, c.h_kv());
  Tensor fk = grown(backend_, sl.fk, kv_rows, c.h_kv());
  Tensor fv = grown(backend_, sl.fv, kv_rows, c.h_kv());
  enqueue_fetch(ctx, layer, sl);
  recompute_chunks(ctx, layer, sl);
  backend_.wait(Queue::compute, sl.kv_landed);
  const auto row = static_cast<std::size_t>(c.h_kv());
  k.assign(static_cast<std::size_t>(s) * row, 0.0f);
  v.assign(static_cast<std::size_t>(s) * row, 0.0f);
  if (ctx.l_total > 0) {
    backend_.copy_to_host(Queue::compute, k.data(), DType::f32, rk.rows_slice(0, ctx.l_total));
    backend_.copy_to_host(Queue::compute, v.data(), DType::f32, rv.rows_slice(0, ctx.l_total));
  }
  if (ctx.kv_total > 0) {
    const auto off = static_cast<std::size_t>(ctx.l_total) * row;
    backend_.copy_to_host(Queue::compute, k.data() + off, DType::f32,
                          fk.rows_slice(0, ctx.kv_total));
    backend_.copy_to_host(Queue::compute, v.data() + off, DType::f32,
                          fv.rows_slice(0, ctx.kv_total));
  }
  backend_.synchronize();
}

}  // namespace kvpr::worker
