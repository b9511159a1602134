// The host third of the three-way split (issue 14) in the decode step: the query rows go down,
// host threads attend over [m, s) of each sequence straight from the store's blocks, the partials
// come up and merge into the device's attention by the log-sum-exp rule — per micro-batch unit.
#include <algorithm>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;
using planner::DecodeOp;

void Engine::download_query(Step& step, const DecodeOp& op) {
  // On the compute queue, right behind the projection (decode_schedule.h says why not on copy).
  const ModelConfig& c = model_.config();
  const auto g = static_cast<std::size_t>(op.micro);
  const std::int64_t r0 = step.schedule->micro_first(g);
  auto begin = step.tracer ? step.tracer->mark(Queue::compute) : nullptr;
  {
    Clock clock(step.times.other);
    backend_.copy_to_host(Queue::compute, host_q_.data() + r0 * c.h, DType::f32,
                          step.q.rows_slice(r0, step.schedule->micro_size(g)));
  }
  step.query_landed = backend_.record(Queue::compute);
  if (step.tracer)
    step.tracer->add("download_query", Queue::compute, op.layer, -1, begin, step.query_landed);
}

void Engine::host_attend(Step& step, const DecodeOp& op) {
  // Host threads wait for the query rows, then read the store's K,V blocks of [m, s) in place;
  // upload_partials waits for them. The store's blocks stay put: nothing writes rows below s.
  const ModelConfig& c = model_.config();
  const auto& schedule = *step.schedule;
  const std::int64_t layer = op.layer;
  const auto g = static_cast<std::size_t>(op.micro);
  const auto first = static_cast<std::size_t>(schedule.micro_first(g));
  std::vector<HostAttnSeq> seqs(static_cast<std::size_t>(schedule.micro_size(g)));
  for (std::size_t i = first; i < first + seqs.size(); ++i) {
    HostAttnSeq& h = seqs[i - first];
    h.q = host_q_.data() + i * static_cast<std::size_t>(c.h);
    h.partial = host_partials_.data() + i * static_cast<std::size_t>(c.n_heads * (c.head_dim + 2));
    const std::int64_t m = schedule.m(i);
    const std::int64_t s = step.positions[i];
    if (m < s) {
      h.k = store_.locate(step.seqs[i], layer, Part::k, m, s);
      h.v = store_.locate(step.seqs[i], layer, Part::v, m, s);
    }
  }
  auto landed = step.query_landed;
  host_->start([this, landed] { backend_.host_wait(landed); }, std::move(seqs),
               store_.shape().dtype, step.attn_shape);
}

void Engine::upload_partials(Step& step, const DecodeOp& op) {
  {
    Clock idle(step.times.idle);
    host_->wait();
  }
  step.times.host_attention += host_->last_job_s();
  // host_partials_ is rewritten only after the next layer's query download, which this compute
  // queue runs after this upload.
  const auto g = static_cast<std::size_t>(op.micro);
  const std::int64_t r0 = step.schedule->micro_first(g);
  const std::int64_t cols = step.partials.cols;
  auto begin = step.tracer ? step.tracer->mark(Queue::compute) : nullptr;
  {
    Clock clock(step.times.other);
    backend_.copy_to_device(Queue::compute,
                            step.partials.rows_slice(r0, step.schedule->micro_size(g)),
                            host_partials_.data() + r0 * cols, DType::f32);
  }
  if (step.tracer) {
    step.tracer->add("upload_partials", Queue::compute, op.layer, -1, begin,
                     step.tracer->mark(Queue::compute));
  }
}

void Engine::merge(Step& step, const DecodeOp& op) {
  const auto g = static_cast<std::size_t>(op.micro);
  const std::int64_t r0 = step.schedule->micro_first(g);
  const std::int64_t n = step.schedule->micro_size(g);
  backend_.attention_merge(step.attn.rows_slice(r0, n), step.stats.rows_slice(r0, n),
                           step.partials.rows_slice(r0, n), step.attn_shape);
}

}  // namespace kvpr::worker
