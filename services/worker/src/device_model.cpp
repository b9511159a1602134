#include "kvpr/worker/device_model.h"

#include <array>
#include <cstdlib>
#include <cstring>

#include "kvpr/common/error.h"
#include "kvpr/common/progress.h"

namespace kvpr::worker {
namespace {

constexpr std::size_t kAlign = 64;

std::size_t aligned(std::size_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

// The weight-matrix names of a layer in placement order, by layer_matrix index.
std::vector<std::pair<std::size_t, std::string>> matrices(const ModelConfig& c) {
  if (c.arch == Arch::opt) {
    return {{0, "q_proj"}, {1, "k_proj"}, {2, "v_proj"}, {3, "o_proj"}, {4, "fc1"}, {5, "fc2"}};
  }
  return {{0, "q_proj"},  {1, "k_proj"},    {2, "v_proj"},   {3, "o_proj"},
          {6, "up_proj"}, {7, "gate_proj"}, {8, "down_proj"}};
}

}  // namespace

Linear& layer_linear(DeviceLayer& layer, std::size_t index) {
  std::array<Linear*, kLayerMatrices> all = {&layer.q,  &layer.k,    &layer.v,
                                             &layer.o,  &layer.fc1,  &layer.fc2,
                                             &layer.up, &layer.gate, &layer.down};
  if (index >= all.size()) fail("layer_linear: index ", index, " out of range");
  return *all[index];
}

planner::WeightLayout weight_layout(const ModelConfig& c, DType compute) {
  const auto h = static_cast<std::uint64_t>(c.h);
  const auto h_kv = static_cast<std::uint64_t>(c.h_kv());
  const auto ffn = static_cast<std::uint64_t>(c.ffn);
  const std::uint64_t dev = size_of(compute);
  const std::uint64_t host = size_of(c.dtype);
  planner::WeightLayout w;
  std::vector<std::uint64_t> elements = {h * h, h_kv * h, h_kv * h, h * h};
  if (c.arch == Arch::opt) {
    elements.insert(elements.end(), {ffn * h, h * ffn});
  } else {
    elements.insert(elements.end(), {ffn * h, ffn * h, h * ffn});
  }
  for (const std::uint64_t n : elements) w.matrices.push_back({n * dev, n * host});
  const auto vocab = static_cast<std::uint64_t>(c.vocab);
  const auto wepd = static_cast<std::uint64_t>(c.word_embed_proj_dim);
  std::uint64_t fixed = vocab * wepd * (c.tie_word_embeddings ? 1 : 2);
  if (c.arch == Arch::opt) fixed += static_cast<std::uint64_t>(c.max_positions + 2) * h;
  if (c.has_projections()) fixed += 2 * h * wepd;
  fixed += static_cast<std::uint64_t>(c.n_layers) * (8 * h + 2 * h_kv + 2 * ffn);  // norms, biases
  w.fixed_device_bytes = fixed * dev;
  return w;
}

HostWeights::HostWeights(kernels::Backend& backend, std::size_t bytes) : backend_(backend) {
  data_ =
      static_cast<std::byte*>(std::aligned_alloc(kAlign, aligned(std::max<std::size_t>(bytes, 1))));
  if (data_ == nullptr)
    raise(ErrorKind::overloaded, "no host memory for ", bytes, " bytes of weights");
  registered_ = backend_.register_host(data_, bytes);
}

HostWeights::~HostWeights() {
  if (registered_) backend_.unregister_host(data_);
  std::free(data_);
}

std::uint64_t DeviceModel::streamed_host_bytes(std::int64_t i) const {
  std::uint64_t bytes = 0;
  for (const auto& m : streamed(i)) {
    bytes += static_cast<std::uint64_t>(m.rows * m.cols) * size_of(m.host_dtype);
  }
  return bytes;
}

DeviceModel::~DeviceModel() {
  try {
    backend_.synchronize();  // no copy may still read host_
  } catch (...) {            // a destructor never throws
  }
}

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

Tensor DeviceModel::place(const Checkpoint& checkpoint, const std::string& name, std::int64_t layer,
                          std::size_t index, bool resident) {
  if (resident) return upload(checkpoint, name);
  const TensorView& view = checkpoint.tensor(name);
  if (view.shape.size() != 2) fail("weight ", name, " is not a matrix");
  StreamedMatrix m;
  m.index = index;
  m.host_dtype = view.dtype;
  m.rows = view.shape[0];
  m.cols = view.shape[1];
  std::byte* host = host_->data() + host_offset_;
  std::memcpy(host, view.data, view.nbytes);
  host_offset_ += aligned(view.nbytes);
  m.host = host;
  auto& list = streamed_[static_cast<std::size_t>(layer)];
  m.offset = list.empty()
                 ? 0
                 : list.back().offset +
                       aligned(static_cast<std::size_t>(list.back().rows * list.back().cols) *
                               size_of(backend_.compute_dtype()));
  list.push_back(m);
  return {};
}

Norm DeviceModel::norm(const Checkpoint& checkpoint, const std::string& prefix, bool with_bias) {
  Norm n;
  n.w = upload(checkpoint, prefix + ".weight");
  if (with_bias) n.b = upload(checkpoint, prefix + ".bias");
  return n;
}

namespace {

// The checkpoint's weights as placement sees them (every layer has layer 0's shapes).
planner::WeightLayout checkpoint_layout(const Checkpoint& checkpoint, std::uint64_t fixed,
                                        std::size_t dt) {
  const ModelConfig& c = checkpoint.config();
  planner::WeightLayout w;
  w.fixed_device_bytes = fixed;
  for (const auto& [index, part] : matrices(c)) {
    const TensorView& view = checkpoint.tensor(names::layer(c, 0, part) + ".weight");
    w.matrices.push_back({static_cast<std::uint64_t>(view.numel()) * dt, view.nbytes});
  }
  return w;
}

// Device bytes of everything but the layers' matrices: embeddings, head, norms, biases.
std::uint64_t fixed_device_bytes(const Checkpoint& checkpoint, std::size_t dt) {
  const ModelConfig& c = checkpoint.config();
  const bool opt = c.arch == Arch::opt;
  std::uint64_t n = 0;
  const auto add = [&](const std::string& name) {
    n += static_cast<std::uint64_t>(checkpoint.tensor(name).numel());
  };
  add(names::embed_tokens(c));
  if (opt) add(names::embed_positions(c));
  if (c.has_projections()) {
    add(names::project_in(c));
    add(names::project_out(c));
  }
  if (names::lm_head(c) != names::embed_tokens(c)) add(names::lm_head(c));
  if (!opt || c.final_layer_norm) {
    add(names::final_norm(c) + ".weight");
    if (opt) add(names::final_norm(c) + ".bias");
  }
  const bool attn_bias = opt ? c.enable_bias : c.attention_bias;
  const bool mlp_bias = opt ? c.enable_bias : c.mlp_bias;
  for (std::int64_t i = 0; i < c.n_layers; ++i) {
    for (const char* norm : {"attn_norm", "ffn_norm"}) {
      add(names::layer(c, i, norm) + ".weight");
      if (opt) add(names::layer(c, i, norm) + ".bias");
    }
    for (const auto& [index, part] : matrices(c)) {
      if (index <= 3 ? attn_bias : mlp_bias) add(names::layer(c, i, part) + ".bias");
    }
  }
  return n * dt;
}

}  // namespace

DeviceModel::DeviceModel(const Checkpoint& checkpoint, kernels::Backend& backend,
                         bool show_progress, WeightPlacement placement)
    : config_(checkpoint.config()), backend_(backend) {
  const ModelConfig& c = config_;
  const bool opt = c.arch == Arch::opt;
  const std::size_t dt = size_of(backend_.compute_dtype());
  const std::uint64_t budget = backend_.memory_budget();
  const std::uint64_t fixed = fixed_device_bytes(checkpoint, dt);
  const planner::WeightLayout layout = checkpoint_layout(checkpoint, fixed, dt);
  const auto need = [&](double f) { return layout.device_bytes(f, c.n_layers); };
  double fraction = 1.0;
  if (placement.device_fraction) {
    fraction = *placement.device_fraction;
    if (!(fraction >= 0 && fraction <= 1))
      fail("weight fraction on the device must be in [0, 1], got ", fraction);
  } else if (budget > 0) {
    // The largest share (a prefix of the layer's matrices) that fits beside the reserve.
    const std::uint64_t room = budget > backend_.memory_used() + placement.reserve_bytes
                                   ? budget - backend_.memory_used() - placement.reserve_bytes
                                   : 0;
    if (need(0) > room) {
      raise(ErrorKind::overloaded, "device memory budget of ", budget,
            " bytes is too small for one layer's working set: ", fixed,
            " bytes of embeddings, head and norms, two ", layout.slot_bytes(0),
            "-byte slots for streamed layer weights and ", placement.reserve_bytes,
            " bytes of activations and K,V staging");
    }
    for (const double f : layout.fractions()) {  // ascending
      if (need(f) <= room) fraction = f;
    }
  }
  const std::vector<bool> kept = layout.resident(fraction);
  std::vector<bool> resident(kLayerMatrices, true);  // by layer_linear index
  std::size_t host_per_layer = 0;
  {
    std::size_t i = 0;
    for (const auto& [index, part] : matrices(c)) {
      resident[index] = kept[i];
      if (!kept[i]) host_per_layer += aligned(layout.matrices[i].host);
      matrix_bytes_ += layout.matrices[i].host;
      if (kept[i]) resident_matrix_bytes_ += layout.matrices[i].host;
      ++i;
    }
  }
  matrix_bytes_ *= static_cast<std::uint64_t>(c.n_layers);
  resident_matrix_bytes_ *= static_cast<std::uint64_t>(c.n_layers);
  slot_bytes_ = layout.slot_bytes(fraction);
  if (budget > 0 && need(fraction) + backend_.memory_used() > budget) {
    raise(ErrorKind::overloaded, "device memory budget of ", budget, " bytes cannot hold ",
          need(fraction), " bytes of weights (", fraction,
          " of each layer resident, two slots for the rest, embeddings and head); lower the "
          "weight fraction or raise --device-memory");
  }
  streamed_.resize(static_cast<std::size_t>(c.n_layers));
  if (slot_bytes_ > 0) {
    host_ = std::make_unique<HostWeights>(backend_,
                                          host_per_layer * static_cast<std::size_t>(c.n_layers));
  }
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
    for (const auto& [index, part] : matrices(c)) {
      const std::string prefix = names::layer(c, i, part);
      Linear& l = layer_linear(layer, index);
      l.w = place(checkpoint, prefix + ".weight", i, index, resident[index]);
      if (index <= 3 ? attn_bias : mlp_bias) l.b = upload(checkpoint, prefix + ".bias");
    }
    layer.attn_norm = norm(checkpoint, names::layer(c, i, "attn_norm"), opt);
    layer.ffn_norm = norm(checkpoint, names::layer(c, i, "ffn_norm"), opt);
    layers_.push_back(layer);
    progress.update(static_cast<std::uint64_t>(i + 1));
  }
  if (!opt || c.final_layer_norm) final_norm = norm(checkpoint, names::final_norm(c), opt);
  const std::string head = names::lm_head(c);
  lm_head = head == names::embed_tokens(c) ? embed_tokens : upload(checkpoint, head);
  backend_.synchronize();
}

}  // namespace kvpr::worker
