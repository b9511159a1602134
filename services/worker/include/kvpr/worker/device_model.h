// A checkpoint's weights uploaded to a backend, converted to its compute dtype, with the model
// config. Owns every device buffer it allocates; built once per worker and read by every step.
//
// Weight placement (throughput mode): a share of each layer's weight matrices stays on the device;
// the others are kept in host memory (registered with the backend, in the checkpoint's dtype) and
// streamed into a device slot before the layer runs (WeightStream, weight_stream.h). Which
// matrices stay follows FlexGen's rule: in the layer's order, a matrix is resident when the middle
// of its bytes falls within the resident share. Embeddings, the LM head, norms and biases always
// stay on the device.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "kvpr/common/checkpoint.h"
#include "kvpr/kernels/backend.h"
#include "kvpr/planner/throughput_planner.h"

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

// The linear layers of a layer by index: q, k, v, o, fc1, fc2, up, gate, down.
inline constexpr std::size_t kLayerMatrices = 9;
Linear& layer_linear(DeviceLayer& layer, std::size_t index);

// A layer's weight matrix kept in host memory: streamed to `offset` bytes into a device slot.
struct StreamedMatrix {
  std::size_t index = 0;  // layer_linear index
  const void* host = nullptr;
  DType host_dtype = DType::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::size_t offset = 0;  // in the slot, in the compute dtype
};

// The weights of a model with this config as placement sees them (for the throughput planner).
planner::WeightLayout weight_layout(const ModelConfig& c, DType compute);

struct WeightPlacement {
  // Share of each layer's weight-matrix bytes kept on the device; nullopt: the largest share that
  // fits the backend's memory budget beside reserve_bytes (all of it without a budget).
  std::optional<double> device_fraction = 1.0;
  std::uint64_t reserve_bytes = 0;  // left free for the engine's working set
};

// Host memory for streamed weights, registered with the backend while it lives.
class HostWeights {
 public:
  HostWeights(kernels::Backend& backend, std::size_t bytes);
  ~HostWeights();
  HostWeights(const HostWeights&) = delete;
  HostWeights& operator=(const HostWeights&) = delete;
  std::byte* data() const { return data_; }

 private:
  kernels::Backend& backend_;
  std::byte* data_ = nullptr;
  bool registered_ = false;
};

class DeviceModel {
 public:
  // Uploads every tensor the config needs; `show_progress` prints a progress line on stderr.
  // Fails with the sizes when the resident share does not fit the backend's memory budget.
  DeviceModel(const Checkpoint& checkpoint, kernels::Backend& backend, bool show_progress,
              WeightPlacement placement = {});
  ~DeviceModel();
  DeviceModel(const DeviceModel&) = delete;
  DeviceModel& operator=(const DeviceModel&) = delete;

  const ModelConfig& config() const { return config_; }
  // A layer's device tensors; a streamed matrix's tensor has data == nullptr (WeightStream fills
  // it in).
  const DeviceLayer& layer(std::int64_t i) const { return layers_[static_cast<std::size_t>(i)]; }
  const std::vector<StreamedMatrix>& streamed(std::int64_t i) const {
    return streamed_[static_cast<std::size_t>(i)];
  }
  // Device bytes of the largest layer's streamed matrices (one WeightStream slot); 0: none.
  std::size_t slot_bytes() const { return slot_bytes_; }
  // Bytes of layer i's streamed matrices in host memory (what crosses the link per load).
  std::uint64_t streamed_host_bytes(std::int64_t i) const;
  // Bytes of every layer's weight matrices, and of those resident on the device.
  std::uint64_t layer_matrix_bytes() const { return matrix_bytes_; }
  std::uint64_t resident_matrix_bytes() const { return resident_matrix_bytes_; }
  double device_fraction() const {
    return matrix_bytes_ == 0
               ? 1.0
               : static_cast<double>(resident_matrix_bytes_) / static_cast<double>(matrix_bytes_);
  }

  Tensor embed_tokens;     // [vocab, word_embed_proj_dim]
  Tensor embed_positions;  // OPT: [max_positions + 2, h]
  Linear project_in;       // OPT when word_embed_proj_dim != h
  Linear project_out;
  Norm final_norm;  // absent (w.data == nullptr) for post-LN OPT
  Tensor lm_head;   // [vocab, word_embed_proj_dim]

 private:
  Tensor upload(const Checkpoint& checkpoint, const std::string& name);
  // Uploads or keeps in host memory (at host_offset_) per the placement of its layer.
  Tensor place(const Checkpoint& checkpoint, const std::string& name, std::int64_t layer,
               std::size_t index, bool resident);
  Norm norm(const Checkpoint& checkpoint, const std::string& prefix, bool with_bias);

  ModelConfig config_;
  kernels::Backend& backend_;
  std::vector<DeviceLayer> layers_;
  std::vector<std::unique_ptr<kernels::DeviceBuffer>> buffers_;
  std::uint64_t uploaded_bytes_ = 0;
  std::vector<std::vector<StreamedMatrix>> streamed_;
  std::unique_ptr<HostWeights> host_;
  std::size_t host_offset_ = 0;
  std::size_t slot_bytes_ = 0;
  std::uint64_t matrix_bytes_ = 0;
  std::uint64_t resident_matrix_bytes_ = 0;
};

}  // namespace kvpr::worker
