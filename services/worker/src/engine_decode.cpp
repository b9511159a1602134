// The decode step: the planner's DecodeSchedule (decode_schedule.h, which the step model replays
// to predict this very order of work) executed on the backend's two queues. Every op of the
// schedule maps to one phase below; the queue fences say what each one orders. The K,V ops
// themselves are in engine_kv.cpp, the host third of the three-way split in engine_host.cpp.
#include <algorithm>
#include <cmath>
#include <set>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
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
  std::vector<float> out;
  run_decode(seqs, tokens, {}, &out, nullptr);
  return out;
}

std::vector<kernels::SampledRow> Engine::decode_sampled(
    std::span<const SeqHandle> seqs, std::span<const std::int32_t> tokens,
    std::span<const kernels::RowSampling> sampling) {
  if (sampling.size() != seqs.size()) {
    fail("decode: sampling numbers for ", sampling.size(), " rows for a batch of ", seqs.size(),
         " sequences");
  }
  std::vector<kernels::SampledRow> out;
  run_decode(seqs, tokens, sampling, nullptr, &out);
  return out;
}

void Engine::run_decode(std::span<const SeqHandle> seqs, std::span<const std::int32_t> tokens,
                        std::span<const kernels::RowSampling> sampling, std::vector<float>* logits,
                        std::vector<kernels::SampledRow>* sampled) {
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
  step.logits = logits;
  step.sampling = sampling;
  step.sampled = sampled;
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
      return compute("head", step.times.other, [&] {
        if (step.sampled != nullptr) {
          *step.sampled = backend_.sample(head(step.x), step.sampling);
        } else {
          logits(step.x, *step.logits);
        }
      });
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

}  // namespace kvpr::worker
