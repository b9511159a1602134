// Checkpoint directories: which tensors an architecture needs (expected_tensors, names::), and the
// loader that opens one or several safetensors files and checks them against that list.
//
// The Checkpoint owns its SafetensorsFiles; every TensorView it hands out shares the mapping of its
// file, so views stay valid even after the Checkpoint is gone. Construction is the only place that
// throws; lookups of a missing name throw too, naming the directory.
#include "kvpr/common/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kvpr/common/error.h"

namespace kvpr {

namespace {

using nlohmann::json;

std::string opt_or_llama(const ModelConfig& c, const char* opt, const char* llama) {
  return c.arch == Arch::opt ? opt : llama;
}

std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A shard name from an index must be a plain file name inside the checkpoint directory.
bool plain_file_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::none_of(name.begin(), name.end(), [](char ch) {
    return ch == '/' || ch == '\\' || static_cast<unsigned char>(ch) < 0x20;
  });
}

// Opens the shards of an index and checks that the weight_map and the shards agree both ways.
std::vector<SafetensorsFile> open_shards(const std::filesystem::path& dir,
                                         const std::filesystem::path& index_path) {
  const std::string where = index_path.string();
  const json index = json::parse(read_text(index_path), nullptr, false);
  if (index.is_discarded() || !index.is_object()) fail(where, ": not a JSON object");
  const auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object()) fail(where, ": no weight_map object");
  std::map<std::string, std::set<std::string>> by_shard;
  for (const auto& [tensor, shard] : map->items()) {
    if (!shard.is_string())
      fail(where, ": tensor ", quoted_name(tensor), ": shard name is not a string");
    if (!plain_file_name(shard.get<std::string>())) {
      fail(where, ": tensor ", quoted_name(tensor), ": bad shard name ",
           quoted_name(shard.get<std::string>()));
    }
    by_shard[shard.get<std::string>()].insert(tensor);
  }
  if (by_shard.empty()) fail(where, ": weight_map is empty");
  std::vector<SafetensorsFile> files;
  for (const auto& [shard, tensors] : by_shard) {
    const std::filesystem::path path = dir / shard;
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      fail(where, ": shard ", quoted_name(shard), " (holding tensor ",
           quoted_name(*tensors.begin()), ") does not exist");
    }
    SafetensorsFile file(path);
    for (const std::string& name : tensors) {
      if (file.tensors().count(name) == 0) {
        fail(path.string(), ": tensor ", quoted_name(name), " named by ",
             index_path.filename().string(), " is not in this shard");
      }
    }
    for (const auto& [name, view] : file.tensors()) {
      if (tensors.count(name) == 0) {
        fail(path.string(), ": tensor ", quoted_name(name), " is not assigned to this shard by ",
             index_path.filename().string());
      }
    }
    files.push_back(std::move(file));
  }
  return files;
}

}  // namespace

namespace names {

std::string embed_tokens(const ModelConfig& c) {
  return opt_or_llama(c, "model.decoder.embed_tokens.weight", "model.embed_tokens.weight");
}

std::string embed_positions(const ModelConfig& c) {
  if (c.arch != Arch::opt)
    fail("names::embed_positions: ", to_string(c.arch), " has no learned positions");
  return "model.decoder.embed_positions.weight";
}

std::string project_in(const ModelConfig& c) {
  if (c.arch != Arch::opt) fail("names::project_in: ", to_string(c.arch), " has no project_in");
  return "model.decoder.project_in.weight";
}

std::string project_out(const ModelConfig& c) {
  if (c.arch != Arch::opt) fail("names::project_out: ", to_string(c.arch), " has no project_out");
  return "model.decoder.project_out.weight";
}

std::string final_norm(const ModelConfig& c) {
  return opt_or_llama(c, "model.decoder.final_layer_norm", "model.norm");
}

std::string lm_head(const ModelConfig& c) {
  return c.tie_word_embeddings ? embed_tokens(c) : "lm_head.weight";
}

std::string layer(const ModelConfig& c, std::int64_t layer, std::string_view part) {
  if (layer < 0 || layer >= c.n_layers) {
    fail("names::layer: layer ", layer, " out of range [0, ", c.n_layers, ")");
  }
  // (part, OPT suffix, LLaMA suffix); "" where the architecture has no such tensor.
  static constexpr std::string_view kParts[][3] = {
      {"q_proj", "self_attn.q_proj", "self_attn.q_proj"},
      {"k_proj", "self_attn.k_proj", "self_attn.k_proj"},
      {"v_proj", "self_attn.v_proj", "self_attn.v_proj"},
      {"o_proj", "self_attn.out_proj", "self_attn.o_proj"},
      {"attn_norm", "self_attn_layer_norm", "input_layernorm"},
      {"ffn_norm", "final_layer_norm", "post_attention_layernorm"},
      {"fc1", "fc1", ""},
      {"fc2", "fc2", ""},
      {"gate_proj", "", "mlp.gate_proj"},
      {"up_proj", "", "mlp.up_proj"},
      {"down_proj", "", "mlp.down_proj"},
  };
  for (const auto& row : kParts) {
    if (row[0] != part) continue;
    const std::string_view suffix = c.arch == Arch::opt ? row[1] : row[2];
    if (suffix.empty()) break;
    return str(c.arch == Arch::opt ? "model.decoder.layers." : "model.layers.", layer, ".", suffix);
  }
  fail("names::layer: unknown part ", quoted_name(part), " for ", to_string(c.arch));
}

}  // namespace names

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  const auto add = [&out](std::string name, std::vector<std::int64_t> shape) {
    out.push_back({std::move(name), std::move(shape)});
  };
  // A linear layer [out, in] and, when it has one, its bias [out].
  const auto linear = [&add](const std::string& prefix, std::int64_t n_out, std::int64_t n_in,
                             bool bias) {
    add(prefix + ".weight", {n_out, n_in});
    if (bias) add(prefix + ".bias", {n_out});
  };
  const auto norm = [&add, &c](const std::string& prefix, bool bias) {
    add(prefix + ".weight", {c.h});
    if (bias) add(prefix + ".bias", {c.h});
  };
  const std::int64_t h = c.h;
  if (c.arch == Arch::opt) {
    const std::int64_t proj = c.word_embed_proj_dim;
    add(names::embed_tokens(c), {c.vocab, proj});
    add(names::embed_positions(c), {c.max_positions + 2, h});  // rows 0, 1 are OPT's offset
    if (c.has_projections()) {
      add(names::project_in(c), {h, proj});
      add(names::project_out(c), {proj, h});
    }
    for (std::int64_t l = 0; l < c.n_layers; ++l) {
      for (const char* part : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
        linear(names::layer(c, l, part), h, h, c.enable_bias);
      }
      norm(names::layer(c, l, "attn_norm"), true);
      linear(names::layer(c, l, "fc1"), c.ffn, h, c.enable_bias);
      linear(names::layer(c, l, "fc2"), h, c.ffn, c.enable_bias);
      norm(names::layer(c, l, "ffn_norm"), true);
    }
    if (c.final_layer_norm) norm(names::final_norm(c), true);
    if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab, proj});
  } else {
    add(names::embed_tokens(c), {c.vocab, h});
    for (std::int64_t l = 0; l < c.n_layers; ++l) {
      linear(names::layer(c, l, "q_proj"), h, h, c.attention_bias);
      linear(names::layer(c, l, "k_proj"), c.h_kv(), h, c.attention_bias);
      linear(names::layer(c, l, "v_proj"), c.h_kv(), h, c.attention_bias);
      linear(names::layer(c, l, "o_proj"), h, h, c.attention_bias);
      norm(names::layer(c, l, "attn_norm"), false);
      norm(names::layer(c, l, "ffn_norm"), false);
      linear(names::layer(c, l, "gate_proj"), c.ffn, h, c.mlp_bias);
      linear(names::layer(c, l, "up_proj"), c.ffn, h, c.mlp_bias);
      linear(names::layer(c, l, "down_proj"), h, c.ffn, c.mlp_bias);
    }
    norm(names::final_norm(c), false);
    if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab, h});
  }
  return out;
}

Checkpoint::Checkpoint(const std::filesystem::path& dir)
    : dir_(dir), config_(load_model_config(dir / "config.json")) {
  const std::filesystem::path index = dir / "model.safetensors.index.json";
  const std::filesystem::path single = dir / "model.safetensors";
  std::error_code ec;
  const bool sharded = std::filesystem::exists(index, ec);
  if (sharded) {
    files_ = open_shards(dir, index);
  } else if (std::filesystem::exists(single, ec)) {
    files_.emplace_back(single);
  } else {
    fail(dir.string(), ": neither model.safetensors nor model.safetensors.index.json exists");
  }
  const std::string source = (sharded ? index : single).string();

  for (const SafetensorsFile& file : files_) {
    for (const auto& [name, view] : file.tensors()) {
      // Older LLaMA exports keep RoPE's inverse frequencies: derived from the config, not a weight.
      if (name.ends_with(".rotary_emb.inv_freq")) continue;
      // A checkpoint saved from a bare OPTModel names its tensors without the "model." prefix.
      std::string key =
          config_.arch == Arch::opt && name.starts_with("decoder.") ? "model." + name : name;
      if (tensors_.count(key) != 0)
        fail(file.path().string(), ": tensor ", quoted_name(key), " appears twice");
      TensorView canonical = view;
      canonical.name = key;
      tensors_.emplace(std::move(key), std::move(canonical));
    }
  }
  // Some tied exports keep lm_head.weight; when present it is the head (its shape is checked
  // below).
  if (config_.tie_word_embeddings && has("lm_head.weight")) config_.tie_word_embeddings = false;

  std::set<std::string> wanted;
  for (const TensorSpec& spec : expected_tensors(config_)) {
    wanted.insert(spec.name);
    const auto it = tensors_.find(spec.name);
    if (it == tensors_.end()) {
      fail(source, ": tensor ", quoted_name(spec.name), " ", shape_string(spec.shape),
           " is missing");
    }
    if (it->second.shape != spec.shape) {
      fail(it->second.file->path().string(), ": tensor ", quoted_name(spec.name), ": shape ",
           shape_string(it->second.shape), " but the config needs ", shape_string(spec.shape));
    }
  }
  for (const auto& [name, view] : tensors_) {
    if (wanted.count(name) == 0) {
      fail(view.file->path().string(), ": unexpected tensor ", quoted_name(name), " for this ",
           to_string(config_.arch), " config");
    }
  }
}

const TensorView& Checkpoint::tensor(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(dir_.string(), ": no tensor ", quoted_name(name));
  return it->second;
}

}  // namespace kvpr
