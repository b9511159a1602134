// A model's architecture as read from a Hugging Face config.json, normalised to the symbols of
// DESIGN.md (h, h_kv, ...). Parsing rejects an unknown architecture or a missing/invalid field with
// one line that names the file, the field and the value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvpr/common/dtype.h"

namespace kvpr {

enum class Arch { opt, llama };
enum class Activation { relu, gelu, silu };

std::string_view to_string(Arch arch);

struct ModelConfig {
  Arch arch = Arch::opt;
  std::int64_t n_layers = 0;
  std::int64_t h = 0;  // hidden_size
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;  // = n_heads for multi-head attention
  std::int64_t head_dim = 0;    // h / n_heads
  std::int64_t ffn = 0;         // ffn_dim (OPT) or intermediate_size (LLaMA)
  std::int64_t vocab = 0;
  std::int64_t max_positions = 0;
  DType dtype = DType::f32;  // torch_dtype: the dtype of weights, stored activations and K,V
  Activation activation = Activation::relu;
  float norm_eps = 1e-5f;
  int bos_token_id = -1;
  int eos_token_id = -1;  // the first of eos_token_ids (-1: none)
  // Every id that ends a sequence: generation_config.json's eos_token_id (an int or a list) when
  // the checkpoint has one, else config.json's. Empty in configs built in code: use eos_ids().
  std::vector<std::int32_t> eos_token_ids;
  // OPT
  bool pre_layer_norm = true;            // do_layer_norm_before
  bool final_layer_norm = true;          // pre-LN and not _remove_final_layer_norm
  std::int64_t word_embed_proj_dim = 0;  // == h unless project_in/project_out exist
  bool enable_bias = true;
  // LLaMA
  float rope_theta = 10000.0f;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;

  std::int64_t h_kv() const { return n_kv_heads * head_dim; }
  // eos_token_ids, or {eos_token_id} when only that is set.
  std::vector<std::int32_t> eos_ids() const;
  bool has_projections() const { return arch == Arch::opt && word_embed_proj_dim != h; }
};

// Reads and validates DIR/config.json (or the given file), then takes eos_token_ids from
// generation_config.json beside it when that file exists and names eos_token_id.
ModelConfig load_model_config(const std::filesystem::path& config_json);
// Parses and validates config.json text; `source` names it in error messages.
ModelConfig parse_model_config(std::string_view json_text, const std::string& source);

// Serialises a config in the shape Hugging Face writes it (used by the model generator).
std::string model_config_to_json(const ModelConfig& config);

}  // namespace kvpr
