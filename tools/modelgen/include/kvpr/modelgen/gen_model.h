// Writes a Hugging Face-layout checkpoint with a real model's shape and random weights, plus a
// tokenizer, so every user and test can run real shapes without a download.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kvpr/common/model_config.h"

namespace kvpr::modelgen {

// Named shapes: "opt-tiny", "opt-125m", "opt-350m" (post-LN, project_in/out), "opt-1.3b",
// "opt-6.7b", "llama-tiny", "llama-tiny-gqa", "llama2-7b", "tinyllama-1.1b" (grouped-query).
std::vector<std::string> preset_names();
// The config of a preset; Error naming the preset when unknown.
ModelConfig preset(const std::string& name);

struct GenOptions {
  ModelConfig config;         // usually preset(...) with overrides applied
  std::filesystem::path out;  // created if missing
  std::uint64_t seed = 0;
  bool write_tokenizer = true;
  // Called with (bytes written so far, total bytes) while weights are written.
  std::function<void(std::uint64_t, std::uint64_t)> progress;
};

// Writes config.json, generation_config.json, model.safetensors and tokenizer.json.
void generate_model(const GenOptions& options);

}  // namespace kvpr::modelgen
