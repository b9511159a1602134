// A Hugging Face checkpoint directory: config.json plus model.safetensors or a sharded set named by
// model.safetensors.index.json. Opening validates that exactly the tensors the architecture needs
// are there, with the right shapes; the tensor names are those transformers uses for *ForCausalLM.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvpr/common/model_config.h"
#include "kvpr/common/safetensors.h"

namespace kvpr {

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};

// The tensors a checkpoint of this config must hold, in a stable order (OPT's tied lm_head is
// absent; LLaMA's lm_head is present unless tie_word_embeddings).
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);

// Canonical tensor names used by the model code.
namespace names {
std::string embed_tokens(const ModelConfig& c);
std::string embed_positions(const ModelConfig& c);  // OPT only
std::string project_in(const ModelConfig& c);       // OPT only
std::string project_out(const ModelConfig& c);      // OPT only
std::string final_norm(const ModelConfig& c);       // ".weight" / ".bias" appended by callers
std::string lm_head(const ModelConfig& c);  // the tensor the head reads (tied: embed_tokens)
// Per layer: "q_proj", "k_proj", "v_proj", "o_proj" (OPT: out_proj), "attn_norm", "ffn_norm",
// "fc1"/"fc2" (OPT), "gate_proj"/"up_proj"/"down_proj" (LLaMA); the prefix without .weight/.bias.
std::string layer(const ModelConfig& c, std::int64_t layer, std::string_view part);
}  // namespace names

class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& dir() const { return dir_; }
  // The tensor by name; an Error naming the directory and tensor when absent.
  const TensorView& tensor(const std::string& name) const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }

 private:
  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace kvpr
