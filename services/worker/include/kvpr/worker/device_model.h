// A checkpoint's weights uploaded to a backend, converted to its compute dtype, with the model
// config. Owns every device buffer it allocates; built once per worker and read by every step.
#pragma once

#include <memory>
#include <vector>

#include "kvpr/common/checkpoint.h"
#include "kvpr/kernels/backend.h"

namespace kvpr::worker {

using kernels::Tensor;

// A weight and its optional bias (bias.data == nullptr when the layer has none).
struct Linear {
  Tensor w;
  Tensor b;
  const Tensor* bias() const { return b.data != nullptr ? &b : nullptr; }
};

struct Norm {
  Tensor w;
  Tensor b;  // LayerNorm only
};

struct DeviceLayer {
  Linear q, k, v, o;
  Norm attn_norm, ffn_norm;
  Linear fc1, fc2;        // OPT
  Linear gate, up, down;  // LLaMA
};

class DeviceModel {
 public:
  // Uploads every tensor the config needs; `show_progress` prints a progress line on stderr.
  DeviceModel(const Checkpoint& checkpoint, kernels::Backend& backend, bool show_progress);

  const ModelConfig& config() const { return config_; }
  const DeviceLayer& layer(std::int64_t i) const { return layers_[static_cast<std::size_t>(i)]; }

  Tensor embed_tokens;     // [vocab, word_embed_proj_dim]
  Tensor embed_positions;  // OPT: [max_positions + 2, h]
  Linear project_in;       // OPT when word_embed_proj_dim != h
  Linear project_out;
  Norm final_norm;  // absent (w.data == nullptr) for post-LN OPT
  Tensor lm_head;   // [vocab, word_embed_proj_dim]

 private:
  Tensor upload(const Checkpoint& checkpoint, const std::string& name);
  Linear linear(const Checkpoint& checkpoint, const std::string& prefix, bool with_bias);
  Norm norm(const Checkpoint& checkpoint, const std::string& prefix, bool with_bias);

  ModelConfig config_;
  kernels::Backend& backend_;
  std::vector<DeviceLayer> layers_;
  std::vector<std::unique_ptr<kernels::DeviceBuffer>> buffers_;
  std::uint64_t uploaded_bytes_ = 0;
};

}  // namespace kvpr::worker
