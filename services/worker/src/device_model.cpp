#include "kvpr/worker/device_model.h"

#include "kvpr/common/error.h"
#include "kvpr/common/progress.h"

namespace kvpr::worker {

Tensor DeviceModel::upload(const Checkpoint& checkpoint, const std::string& name) {
  const TensorView& view = checkpoint.tensor(name);
  const std::int64_t rows = view.shape.empty() ? 1 : view.shape[0];
  const std::int64_t cols = rows == 0 ? 0 : view.numel() / rows;
  const DType dtype = backend_.compute_dtype();
  auto buffer = backend_.alloc(static_cast<std::size_t>(view.numel()) * size_of(dtype));
  Tensor t = buffer->tensor(dtype, view.shape.size() == 1 ? 1 : rows,
                            view.shape.size() == 1 ? view.numel() : cols);
  backend_.copy_to_device(kernels::Queue::compute, t, view.data, view.dtype);
  uploaded_bytes_ += view.nbytes;
  buffers_.push_back(std::move(buffer));
  return t;
}

Linear DeviceModel::linear(const Checkpoint& checkpoint, const std::string& prefix,
                           bool with_bias) {
  Linear l;
  l.w = upload(checkpoint, prefix + ".weight");
  if (with_bias) l.b = upload(checkpoint, prefix + ".bias");
  return l;
}

Norm DeviceModel::norm(const Checkpoint& checkpoint, const std::string& prefix, bool with_bias) {
  Norm n;
  n.w = upload(checkpoint, prefix + ".weight");
  if (with_bias) n.b = upload(checkpoint, prefix + ".bias");
  return n;
}

DeviceModel::DeviceModel(const Checkpoint& checkpoint, kernels::Backend& backend,
                         bool show_progress)
    : config_(checkpoint.config()), backend_(backend) {
  const ModelConfig& c = config_;
  const bool opt = c.arch == Arch::opt;
  Progress progress(str("loading ", checkpoint.dir().string()),
                    static_cast<std::uint64_t>(c.n_layers), show_progress);
  embed_tokens = upload(checkpoint, names::embed_tokens(c));
  if (opt) embed_positions = upload(checkpoint, names::embed_positions(c));
  if (c.has_projections()) {
    project_in.w = upload(checkpoint, names::project_in(c));
    project_out.w = upload(checkpoint, names::project_out(c));
  }
  const bool attn_bias = opt ? c.enable_bias : c.attention_bias;
  const bool mlp_bias = opt ? c.enable_bias : c.mlp_bias;
  for (std::int64_t i = 0; i < c.n_layers; ++i) {
    DeviceLayer layer;
    layer.q = linear(checkpoint, names::layer(c, i, "q_proj"), attn_bias);
    layer.k = linear(checkpoint, names::layer(c, i, "k_proj"), attn_bias);
    layer.v = linear(checkpoint, names::layer(c, i, "v_proj"), attn_bias);
    layer.o = linear(checkpoint, names::layer(c, i, "o_proj"), attn_bias);
    layer.attn_norm = norm(checkpoint, names::layer(c, i, "attn_norm"), opt);
    layer.ffn_norm = norm(checkpoint, names::layer(c, i, "ffn_norm"), opt);
    if (opt) {
      layer.fc1 = linear(checkpoint, names::layer(c, i, "fc1"), mlp_bias);
      layer.fc2 = linear(checkpoint, names::layer(c, i, "fc2"), mlp_bias);
    } else {
      layer.gate = linear(checkpoint, names::layer(c, i, "gate_proj"), mlp_bias);
      layer.up = linear(checkpoint, names::layer(c, i, "up_proj"), mlp_bias);
      layer.down = linear(checkpoint, names::layer(c, i, "down_proj"), mlp_bias);
    }
    layers_.push_back(layer);
    progress.update(static_cast<std::uint64_t>(i + 1));
  }
  if (!opt || c.final_layer_norm) final_norm = norm(checkpoint, names::final_norm(c), opt);
  const std::string head = names::lm_head(c);
  lm_head = head == names::embed_tokens(c) ? embed_tokens : upload(checkpoint, head);
  backend_.synchronize();
}

}  // namespace kvpr::worker
