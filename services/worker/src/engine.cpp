#include "kvpr/worker/engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine_internal.h"
#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;

PhaseTimes& PhaseTimes::operator+=(const PhaseTimes& o) {
  transfer += o.transfer;
  recompute += o.recompute;
  attention += o.attention;
  other += o.other;
  idle += o.idle;
  host_attention += o.host_attention;
  total += o.total;
  return *this;
}

Tensor grown(kernels::Backend& backend, std::unique_ptr<kernels::DeviceBuffer>& buffer,
             std::int64_t rows, std::int64_t cols) {
  const DType dtype = backend.compute_dtype();
  const std::size_t need =
      static_cast<std::size_t>(std::max<std::int64_t>(rows * cols, 1)) * size_of(dtype);
  if (!buffer || buffer->bytes() < need) buffer = backend.alloc(std::max(need, need + need / 2));
  return buffer->tensor(dtype, rows, cols);
}

std::uint64_t working_set_bytes(const ModelConfig& c, std::int64_t batch, std::int64_t context,
                                std::int64_t micro_batches, DType dtype) {
  const auto b = static_cast<double>(std::max<std::int64_t>(batch, 1));
  const auto n = static_cast<double>(std::max<std::int64_t>(context, 1));
  const auto g = static_cast<double>(
      std::clamp<std::int64_t>(micro_batches, 1, std::max<std::int64_t>(batch, 1)));
  const auto h = static_cast<double>(c.h);
  const auto h_kv = static_cast<double>(c.h_kv());
  const auto ffn = static_cast<double>(c.ffn);
  const auto vocab = static_cast<double>(c.vocab);
  const double unit_rows = std::ceil(b / g) * n;  // a unit's K,V rows, recomputed or fetched
  const double staging = planner::kStagingSlots * unit_rows * (h + 4 * h_kv);
  const double prompt = n * (5 * h + 4 * h_kv + 2 * ffn) + vocab;
  const double step =
      static_cast<double>(c.n_layers) * b * (h + 2 * h_kv) + b * (3 * h + 2 * ffn + vocab);
  // Buffers grow by half again when they grow (engine_internal.h: grown).
  return static_cast<std::uint64_t>(1.5 * (staging + prompt + step) *
                                    static_cast<double>(size_of(dtype)));
}

Engine::Engine(const DeviceModel& model, kernels::Backend& backend, kvstore::KvStoreClient& store,
               planner::Planner& planner, EngineOptions options)
    : model_(model),
      backend_(backend),
      store_(store),
      planner_(planner),
      options_(options),
      weights_(model, backend) {
  if (options_.micro_batches < 1)
    fail("micro-batches must be at least 1, got ", options_.micro_batches);
  const ModelConfig& c = model_.config();
  const auto& shape = store_.shape();
  if (shape.n_layers != c.n_layers || shape.h != c.h || shape.h_kv != c.h_kv()) {
    fail("kvstore shape (layers ", shape.n_layers, ", h ", shape.h, ", h_kv ", shape.h_kv,
         ") does not match the model (layers ", c.n_layers, ", h ", c.h, ", h_kv ", c.h_kv(), ")");
  }
  const auto nominal = backend_.nominal_rates();
  rates_ = {nominal.h2d_bytes_per_s, nominal.gemm_flops_per_s};
}

Engine::~Engine() {
  try {
    backend_.synchronize();
  } catch (...) {  // a destructor never throws; the failure was reported to the step that caused it
  }
}

Tensor Engine::scratch(std::size_t index, std::int64_t rows, std::int64_t cols) {
  if (scratch_.size() <= index) scratch_.resize(index + 1);
  return grown(backend_, scratch_[index], rows, cols);
}

void Engine::embed(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                   Tensor x) {
  const ModelConfig& c = model_.config();
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (c.has_projections()) {
    Tensor e = scratch(kProj, n, c.word_embed_proj_dim);
    backend_.embedding(model_.embed_tokens, tokens, e);
    backend_.gemm(e, model_.project_in.w, nullptr, x);
  } else {
    backend_.embedding(model_.embed_tokens, tokens, x);
  }
  if (c.arch == Arch::opt) {
    std::vector<std::int32_t> rows(positions.begin(), positions.end());
    for (auto& r : rows) r += 2;  // OPT's learned positions are offset by 2
    Tensor pos = scratch(kTmp, n, c.h);
    backend_.embedding(model_.embed_positions, rows, pos);
    backend_.add(x, pos, x);
  }
}

void Engine::attention_input(const DeviceLayer& w, Tensor x, Tensor xn) {
  const ModelConfig& c = model_.config();
  if (c.arch == Arch::llama) {
    backend_.rms_norm(x, w.attn_norm.w, c.norm_eps, xn);
  } else if (c.pre_layer_norm) {
    backend_.layer_norm(x, w.attn_norm.w, w.attn_norm.b, c.norm_eps, xn);
  } else {
    backend_.copy_device(Queue::compute, xn, x);  // post-LN: the layer input feeds q, k, v
  }
}

void Engine::qkv(const DeviceLayer& w, Tensor xn, std::span<const std::int32_t> positions, Tensor q,
                 Tensor k, Tensor v) {
  const ModelConfig& c = model_.config();
  backend_.gemm(xn, w.q.w, w.q.bias(), q);
  if (c.arch == Arch::llama) backend_.rope(q, positions, c.n_heads, c.head_dim, c.rope_theta);
  project_kv(w, xn, positions, k, v);
}

void Engine::project_kv(const DeviceLayer& w, Tensor xn, std::span<const std::int32_t> positions,
                        Tensor k, Tensor v) {
  const ModelConfig& c = model_.config();
  backend_.gemm(xn, w.k.w, w.k.bias(), k);
  backend_.gemm(xn, w.v.w, w.v.bias(), v);
  if (c.arch == Arch::llama) backend_.rope(k, positions, c.n_kv_heads, c.head_dim, c.rope_theta);
}

void Engine::attn_out_and_ffn(const DeviceLayer& w, Tensor attn, Tensor x) {
  const ModelConfig& c = model_.config();
  const std::int64_t n = x.rows;
  Tensor tmp = scratch(kTmp, n, c.h);
  backend_.gemm(attn, w.o.w, w.o.bias(), tmp);
  backend_.add(x, tmp, x);
  if (c.arch == Arch::llama) {
    Tensor hin = scratch(kXn, n, c.h);
    backend_.rms_norm(x, w.ffn_norm.w, c.norm_eps, hin);
    Tensor gate = scratch(kFfn1, n, c.ffn);
    Tensor up = scratch(kFfn2, n, c.ffn);
    backend_.gemm(hin, w.gate.w, w.gate.bias(), gate);
    backend_.activation(kernels::Act::silu, gate);
    backend_.gemm(hin, w.up.w, w.up.bias(), up);
    backend_.mul(gate, up, gate);
    backend_.gemm(gate, w.down.w, w.down.bias(), tmp);
    backend_.add(x, tmp, x);
    return;
  }
  const auto act = c.activation == Activation::gelu ? kernels::Act::gelu : kernels::Act::relu;
  if (!c.pre_layer_norm) {
    backend_.layer_norm(x, w.attn_norm.w, w.attn_norm.b, c.norm_eps, tmp);
    backend_.copy_device(Queue::compute, x, tmp);
  }
  Tensor hin = x;
  if (c.pre_layer_norm) {
    hin = scratch(kXn, n, c.h);
    backend_.layer_norm(x, w.ffn_norm.w, w.ffn_norm.b, c.norm_eps, hin);
  }
  Tensor f1 = scratch(kFfn1, n, c.ffn);
  backend_.gemm(hin, w.fc1.w, w.fc1.bias(), f1);
  backend_.activation(act, f1);
  backend_.gemm(f1, w.fc2.w, w.fc2.bias(), tmp);
  backend_.add(x, tmp, x);
  if (!c.pre_layer_norm) {
    backend_.layer_norm(x, w.ffn_norm.w, w.ffn_norm.b, c.norm_eps, tmp);
    backend_.copy_device(Queue::compute, x, tmp);
  }
}

void Engine::logits(Tensor x, std::vector<float>& out) {
  const Tensor out_t = head(x);
  out.resize(static_cast<std::size_t>(out_t.numel()));
  backend_.copy_to_host(Queue::compute, out.data(), DType::f32, out_t);
  backend_.host_wait(backend_.record(Queue::compute));
}

Tensor Engine::head(Tensor x) {
  const ModelConfig& c = model_.config();
  const std::int64_t n = x.rows;
  Tensor hidden = x;
  if (model_.final_norm.w.data != nullptr) {
    hidden = scratch(kXn, n, c.h);
    if (c.arch == Arch::llama) {
      backend_.rms_norm(x, model_.final_norm.w, c.norm_eps, hidden);
    } else {
      backend_.layer_norm(x, model_.final_norm.w, model_.final_norm.b, c.norm_eps, hidden);
    }
  }
  if (c.has_projections()) {
    Tensor proj = scratch(kProj, n, c.word_embed_proj_dim);
    backend_.gemm(hidden, model_.project_out.w, nullptr, proj);
    hidden = proj;
  }
  Tensor out_t = scratch(kLogits, n, c.vocab);
  backend_.gemm(hidden, model_.lm_head, nullptr, out_t);
  return out_t;
}

void Engine::write_rows(SeqHandle seq, std::int64_t layer, kvstore::Part part, std::int64_t t0,
                        Tensor rows, Queue queue) {
  const DType dtype = store_.shape().dtype;
  for (const auto& span : store_.locate(seq, layer, part, t0, t0 + rows.rows)) {
    backend_.copy_to_host(queue, span.data, dtype, rows.rows_slice(span.t0 - t0, span.n_tokens));
  }
}

void Engine::resident_append(SeqHandle seq, std::int64_t layer, Tensor k, Tensor v) {
  auto& r = resident_[seq];
  if (!r) r = std::make_unique<Resident>();
  if (r->layers.empty()) r->layers.resize(static_cast<std::size_t>(model_.config().n_layers));
  auto& L = r->layers[static_cast<std::size_t>(layer)];
  const std::int64_t h_kv = model_.config().h_kv();
  if (L.length + k.rows > L.capacity) {
    const std::int64_t cap = std::max<std::int64_t>(2 * L.capacity, L.length + k.rows + 16);
    std::unique_ptr<kernels::DeviceBuffer> nk, nv;
    Tensor tk = grown(backend_, nk, cap, h_kv);
    Tensor tv = grown(backend_, nv, cap, h_kv);
    if (L.length > 0) {
      backend_.copy_device(Queue::compute, tk.rows_slice(0, L.length),
                           L.k->tensor(backend_.compute_dtype(), L.length, h_kv));
      backend_.copy_device(Queue::compute, tv.rows_slice(0, L.length),
                           L.v->tensor(backend_.compute_dtype(), L.length, h_kv));
    }
    L.k = std::move(nk);
    L.v = std::move(nv);
    L.capacity = cap;
  }
  const DType dt = backend_.compute_dtype();
  backend_.copy_device(Queue::compute,
                       L.k->tensor(dt, L.length + k.rows, h_kv).rows_slice(L.length, k.rows), k);
  backend_.copy_device(Queue::compute,
                       L.v->tensor(dt, L.length + v.rows, h_kv).rows_slice(L.length, v.rows), v);
  L.length += k.rows;
}

SeqHandle Engine::prefill(std::span<const std::int32_t> tokens, std::vector<float>& out,
                          bool all_logits) {
  return prefill(tokens, PromptOut{&out, all_logits, nullptr});
}

void Engine::extend(SeqHandle seq, std::span<const std::int32_t> tokens, std::vector<float>& out,
                    bool all_logits) {
  extend(seq, tokens, PromptOut{&out, all_logits, nullptr});
}

SeqHandle Engine::prefill(std::span<const std::int32_t> tokens, PromptOut out) {
  const ModelConfig& c = model_.config();
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (n == 0) fail("prefill: empty prompt");
  if (n > c.max_positions) {
    fail("prompt of ", n, " tokens exceeds max_position_embeddings ", c.max_positions);
  }
  const SeqHandle seq = store_.open();
  try {
    run_prompt(seq, 0, tokens, out);
  } catch (...) {
    try {
      backend_.synchronize();  // nothing still reads the slots or writes the sequence
    } catch (...) {            // the prompt's own error is the one to report
    }
    weights_.reset();
    resident_.erase(seq);
    store_.free(seq);
    throw;
  }
  return seq;
}

void Engine::extend(SeqHandle seq, std::span<const std::int32_t> tokens, PromptOut out) {
  const ModelConfig& c = model_.config();
  const auto n = static_cast<std::int64_t>(tokens.size());
  const std::int64_t t0 = store_.length(seq);
  if (n == 0) fail("extend: no tokens");
  if (t0 + n > c.max_positions) {
    fail("extending ", t0, " tokens by ", n, " exceeds max_position_embeddings ", c.max_positions);
  }
  try {
    run_prompt(seq, t0, tokens, out);
  } catch (...) {
    try {
      backend_.synchronize();
    } catch (...) {  // the prompt's own error is the one to report
    }
    weights_.reset();
    truncate(seq, t0);  // nothing was committed; the resident K,V may have grown
    throw;
  }
}

// Tokens [t0, t0 + n) of a sequence through every layer, attending causally to themselves and to
// the stored K,V of [0, t0) (uploaded from the store per layer), their activations and K,V written
// to the store; commits them. `out` says what comes back (PromptOut).
void Engine::run_prompt(SeqHandle seq, std::int64_t t0, std::span<const std::int32_t> tokens,
                        PromptOut out) {
  const ModelConfig& c = model_.config();
  const auto n = static_cast<std::int64_t>(tokens.size());
  store_.reserve(seq, n);
  std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
  std::iota(positions.begin(), positions.end(), static_cast<std::int32_t>(t0));
  Tensor x = scratch(kX, n, c.h);
  embed(tokens, positions, x);
  Tensor xn = scratch(kWriteback, n, c.h);
  Tensor q = scratch(kQ, n, c.h);
  Tensor k = scratch(kK, n, c.h_kv());
  Tensor v = scratch(kV, n, c.h_kv());
  Tensor attn = scratch(kAttn, n, c.h);
  // With a stored context, the attention reads [context; new] from one buffer per K and V.
  Tensor kc = t0 > 0 ? scratch(kCtxK, t0 + n, c.h_kv()) : k;
  Tensor vc = t0 > 0 ? scratch(kCtxV, t0 + n, c.h_kv()) : v;
  const DType store_dtype = store_.shape().dtype;
  std::vector<kernels::AttnSegment> segments(static_cast<std::size_t>(n));
  const kernels::AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim,
                                 1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  weights_.load(0);  // streamed weights: one layer ahead of the layer that runs
  for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
    if (layer + 1 < c.n_layers) weights_.load(layer + 1);
    weights_.await(layer);
    const DeviceLayer& w = weights_.layer(layer);
    attention_input(w, x, xn);
    qkv(w, xn, positions, q, k, v);
    write_rows(seq, layer, kvstore::Part::act, t0, xn, Queue::compute);
    write_rows(seq, layer, kvstore::Part::k, t0, k, Queue::compute);
    write_rows(seq, layer, kvstore::Part::v, t0, v, Queue::compute);
    if (options_.policy == planner::Policy::resident) resident_append(seq, layer, k, v);
    if (t0 > 0) {
      for (const auto& span : store_.locate(seq, layer, kvstore::Part::k, 0, t0)) {
        backend_.copy_to_device(Queue::compute, kc.rows_slice(span.t0, span.n_tokens), span.data,
                                store_dtype);
      }
      for (const auto& span : store_.locate(seq, layer, kvstore::Part::v, 0, t0)) {
        backend_.copy_to_device(Queue::compute, vc.rows_slice(span.t0, span.n_tokens), span.data,
                                store_dtype);
      }
      backend_.copy_device(Queue::compute, kc.rows_slice(t0, n), k);
      backend_.copy_device(Queue::compute, vc.rows_slice(t0, n), v);
    }
    for (std::int64_t j = 0; j < n; ++j) {  // causal: token t0 + j sees tokens [0, t0 + j]
      segments[static_cast<std::size_t>(j)] = {j, kc.rows_slice(0, t0 + j + 1),
                                               vc.rows_slice(0, t0 + j + 1)};
    }
    backend_.attention(q, segments, shape, attn);
    attn_out_and_ffn(w, attn, x);
    weights_.release(layer);
  }
  if (out.logits != nullptr) {
    logits(out.all_logits ? x : x.rows_slice(n - 1, 1), *out.logits);
  } else if (out.choice != nullptr) {
    out.choice->chosen =
        backend_.sample(head(x.rows_slice(n - 1, 1)), std::span(&out.choice->sampling, 1)).at(0);
  }
  backend_.synchronize();
  weights_.reset();
  store_.commit(seq, n);
}

void Engine::truncate(SeqHandle seq, std::int64_t n_tokens) {
  store_.truncate(seq, n_tokens);
  if (auto it = resident_.find(seq); it != resident_.end()) {
    for (auto& layer : it->second->layers) layer.length = std::min(layer.length, n_tokens);
  }
}

void Engine::release(SeqHandle seq) {
  resident_.erase(seq);
  store_.free(seq);
}

}  // namespace kvpr::worker
