// config.json → ModelConfig and back. The file is untrusted input: every field is read through
// ConfigReader, which checks type and range and fails with one line naming the file, the field and
// the value. Sizes are capped (kMaxSize) so that the products formed later (tensor shapes, byte
// counts) cannot overflow int64.
#include "kvpr/common/model_config.h"

#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <utility>

#include "json_shown.h"
#include "kvpr/common/error.h"
#include "kvpr/common/safetensors.h"

namespace kvpr {

namespace {

using nlohmann::json;

constexpr std::int64_t kMaxSize = std::int64_t{1} << 24;

using detail::shown;

// Reads typed fields of one config object; `source_` prefixes every error. Null counts as absent
// because transformers writes null for unset optional fields.
class ConfigReader {
 public:
  ConfigReader(const json& object, const std::string& source) : object_(object), source_(source) {}

  const json* find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  // A required size: an integer in [1, kMaxSize].
  std::int64_t size(const char* key) const {
    const json* value = find(key);
    if (value == nullptr) fail(source_, ": field '", key, "' is missing");
    return checked_size(key, *value);
  }
  std::int64_t size_or(const char* key, std::int64_t fallback) const {
    const json* value = find(key);
    return value == nullptr ? fallback : checked_size(key, *value);
  }

  bool flag_or(const char* key, bool fallback) const {
    const json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean())
      fail(source_, ": field '", key, "' is not a boolean: ", shown(*value));
    return value->get<bool>();
  }

  // A positive finite number that fits a float.
  float positive_or(const char* key, float fallback) const {
    const json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) fail(source_, ": field '", key, "' is not a number: ", shown(*value));
    const double x = value->get<double>();
    if (!(x > 0.0) || x > std::numeric_limits<float>::max()) {
      fail(source_, ": field '", key, "' must be positive and finite: ", shown(*value));
    }
    return static_cast<float>(x);
  }

  std::string string_or(const char* key, const std::string& fallback) const {
    const json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_string()) fail(source_, ": field '", key, "' is not a string: ", shown(*value));
    return value->get<std::string>();
  }

  // Token ids: an integer or a list of them (newer configs list several eos ids). An empty list
  // counts as absent.
  std::vector<std::int32_t> token_ids_or(const char* key,
                                         const std::vector<std::int32_t>& fallback) const {
    const json* value = find(key);
    if (value == nullptr || (value->is_array() && value->empty())) return fallback;
    std::vector<std::int32_t> ids;
    if (!value->is_array()) {
      ids.push_back(token_id(key, *value, *value));
      return ids;
    }
    ids.reserve(value->size());
    for (const json& id : *value) ids.push_back(token_id(key, id, *value));
    return ids;
  }
  // One id: the integer, or the first entry of a list.
  int token_id_or(const char* key, int fallback) const {
    return token_ids_or(key, {fallback}).front();
  }

  const std::string& source() const { return source_; }

 private:
  std::int64_t checked_size(const char* key, const json& value) const {
    if (!value.is_number_integer())
      fail(source_, ": field '", key, "' is not an integer: ", shown(value));
    const bool in_range =
        value.is_number_unsigned()
            ? value.get<std::uint64_t>() <= std::uint64_t{kMaxSize}
            : value.get<std::int64_t>() >= 1 && value.get<std::int64_t>() <= kMaxSize;
    if (!in_range || value.get<std::int64_t>() < 1) {
      fail(source_, ": field '", key, "' must be in [1, ", kMaxSize, "]: ", shown(value));
    }
    return value.get<std::int64_t>();
  }

  std::int32_t token_id(const char* key, const json& id, const json& whole) const {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max()) {
      fail(source_, ": field '", key, "' is not a token id: ", shown(whole));
    }
    return static_cast<std::int32_t>(id.get<std::int64_t>());
  }

  const json& object_;
  const std::string& source_;
};

DType read_dtype(const ConfigReader& in) {
  const std::string name = in.string_or("torch_dtype", "float32");
  DType dtype = DType::f32;
  if (!parse_torch_dtype(name, dtype))
    fail(in.source(), ": unknown torch_dtype ", quoted_name(name));
  return dtype;
}

// "opt" or "llama" from model_type, else from architectures; anything else is an error.
Arch read_arch(const json& root, const std::string& source) {
  const auto type = root.find("model_type");
  if (type != root.end() && type->is_string()) {
    const std::string name = type->get<std::string>();
    if (name == "opt") return Arch::opt;
    if (name == "llama") return Arch::llama;
    fail(source, ": unknown architecture ", quoted_name(name));
  }
  const auto archs = root.find("architectures");
  if (archs != root.end() && archs->is_array() && !archs->empty()) {
    const json& first = archs->front();
    const std::string name = first.is_string() ? first.get<std::string>() : shown(first);
    if (name == "OPTForCausalLM") return Arch::opt;
    if (name == "LlamaForCausalLM") return Arch::llama;
    fail(source, ": unknown architecture ", quoted_name(name));
  }
  fail(source, ": unknown architecture: neither model_type nor architectures is given");
}

void read_opt(const ConfigReader& in, ModelConfig& c) {
  c.h = in.size("hidden_size");
  c.n_heads = in.size("num_attention_heads");
  c.n_kv_heads = c.n_heads;
  c.n_layers = in.size("num_hidden_layers");
  c.ffn = in.size("ffn_dim");
  c.vocab = in.size("vocab_size");
  c.max_positions = in.size("max_position_embeddings");
  c.word_embed_proj_dim = in.size_or("word_embed_proj_dim", c.h);
  c.pre_layer_norm = in.flag_or("do_layer_norm_before", true);
  c.final_layer_norm = c.pre_layer_norm && !in.flag_or("_remove_final_layer_norm", false);
  c.enable_bias = in.flag_or("enable_bias", true);
  c.tie_word_embeddings = in.flag_or("tie_word_embeddings", true);
  if (!in.flag_or("layer_norm_elementwise_affine", true)) {
    raise(ErrorKind::unimplemented, in.source(),
          ": layer_norm_elementwise_affine false is not supported");
  }
  const std::string act = in.string_or("activation_function", "relu");
  if (act == "relu")
    c.activation = Activation::relu;
  else if (act == "gelu")
    c.activation = Activation::gelu;
  else
    fail(in.source(), ": field 'activation_function' is ", quoted_name(act),
         ", expected relu or gelu");
  c.norm_eps = 1e-5f;  // OPT's LayerNorm uses the PyTorch default
  c.bos_token_id = in.token_id_or("bos_token_id", 2);
  c.eos_token_ids = in.token_ids_or("eos_token_id", {2});
}

void read_llama(const ConfigReader& in, ModelConfig& c) {
  c.h = in.size("hidden_size");
  c.ffn = in.size("intermediate_size");
  c.n_heads = in.size("num_attention_heads");
  c.n_kv_heads = in.size_or("num_key_value_heads", c.n_heads);
  c.n_layers = in.size("num_hidden_layers");
  c.vocab = in.size("vocab_size");
  c.max_positions = in.size("max_position_embeddings");
  c.norm_eps = in.positive_or("rms_norm_eps", 1e-6f);
  c.rope_theta = in.positive_or("rope_theta", 10000.0f);
  if (const json* scaling = in.find("rope_scaling")) {
    raise(ErrorKind::unimplemented, in.source(),
          ": field 'rope_scaling' is not supported: ", shown(*scaling));
  }
  const std::string act = in.string_or("hidden_act", "silu");
  if (act != "silu")
    fail(in.source(), ": field 'hidden_act' is ", quoted_name(act), ", expected silu");
  c.activation = Activation::silu;
  c.tie_word_embeddings = in.flag_or("tie_word_embeddings", false);
  c.attention_bias = in.flag_or("attention_bias", false);
  c.mlp_bias = in.flag_or("mlp_bias", false);
  c.pre_layer_norm = true;
  c.final_layer_norm = true;
  c.enable_bias = false;
  c.word_embed_proj_dim = c.h;
  c.bos_token_id = in.token_id_or("bos_token_id", 1);
  c.eos_token_ids = in.token_ids_or("eos_token_id", {2});
}

// The relations between sizes that the model code relies on.
void validate(const ConfigReader& in, ModelConfig& c) {
  if (c.h % c.n_heads != 0) {
    fail(in.source(), ": hidden_size ", c.h, " is not divisible by num_attention_heads ",
         c.n_heads);
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    fail(in.source(), ": num_attention_heads ", c.n_heads,
         " is not divisible by num_key_value_heads ", c.n_kv_heads);
  }
  c.head_dim = c.h / c.n_heads;
  if (const json* head_dim = in.find("head_dim");
      head_dim != nullptr && *head_dim != json(c.head_dim)) {
    raise(ErrorKind::unimplemented, in.source(), ": field 'head_dim' is ", shown(*head_dim),
          " but hidden_size / num_attention_heads is ", c.head_dim);
  }
  if (c.arch == Arch::llama && c.head_dim % 2 != 0) {
    fail(in.source(), ": head_dim ", c.head_dim, " is odd; rotary embeddings need it even");
  }
}

// The whole of a small text file (config.json, generation_config.json).
std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(file.string(), ": read failed");
  return text.str();
}

// generation_config.json's eos_token_id, when given, replaces config.json's: transformers'
// generate() stops on the former, and only it lists every id of chat models (LLaMA-3: <|eot_id|>).
void read_generation_config(const std::filesystem::path& file, ModelConfig& c) {
  const std::string text = read_text(file);
  const json root = json::parse(text, nullptr, false);
  if (root.is_discarded()) fail(file.string(), ": not valid JSON");
  if (!root.is_object()) fail(file.string(), ": not a JSON object");
  const std::string source = file.string();
  const ConfigReader in(root, source);
  std::vector<std::int32_t> ids = in.token_ids_or("eos_token_id", {});
  if (ids.empty()) return;
  c.eos_token_id = ids.front();
  c.eos_token_ids = std::move(ids);
}

// A float as the shortest decimal that reads back to it (1e-05, not 9.99999974737875e-06).
double shortest(float x) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  double out = 0.0;
  std::from_chars(buf, res.ptr, out);
  return out;
}

}  // namespace

std::string_view to_string(Arch arch) {
  return arch == Arch::opt ? "opt" : "llama";
}

std::vector<std::int32_t> ModelConfig::eos_ids() const {
  if (!eos_token_ids.empty()) return eos_token_ids;
  if (eos_token_id >= 0) return {eos_token_id};
  return {};
}

ModelConfig parse_model_config(std::string_view json_text, const std::string& source) {
  const json root = json::parse(json_text.begin(), json_text.end(), nullptr, false);
  if (root.is_discarded()) fail(source, ": not valid JSON");
  if (!root.is_object()) fail(source, ": not a JSON object");
  ModelConfig c;
  c.arch = read_arch(root, source);
  const ConfigReader in(root, source);
  c.dtype = read_dtype(in);
  if (c.arch == Arch::opt)
    read_opt(in, c);
  else
    read_llama(in, c);
  c.eos_token_id = c.eos_token_ids.front();
  validate(in, c);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& config_json) {
  std::error_code ec;
  const std::filesystem::path file =
      std::filesystem::is_directory(config_json, ec) ? config_json / "config.json" : config_json;
  ModelConfig c = parse_model_config(read_text(file), file.string());
  const std::filesystem::path generation = file.parent_path() / "generation_config.json";
  if (std::filesystem::is_regular_file(generation, ec)) read_generation_config(generation, c);
  return c;
}

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() > 1)
    j["eos_token_id"] = c.eos_token_ids;
  else
    j["eos_token_id"] = c.eos_token_id;
  j["hidden_size"] = c.h;
  j["max_position_embeddings"] = c.max_positions;
  j["num_attention_heads"] = c.n_heads;
  j["num_hidden_layers"] = c.n_layers;
  j["torch_dtype"] = std::string(torch_name(c.dtype));
  j["transformers_version"] = "4.36.2";
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab;
  j["attention_dropout"] = 0.0;
  if (c.arch == Arch::opt) {
    j["architectures"] = json::array({"OPTForCausalLM"});
    j["model_type"] = "opt";
    j["_remove_final_layer_norm"] = c.pre_layer_norm && !c.final_layer_norm;
    j["activation_function"] = c.activation == Activation::gelu ? "gelu" : "relu";
    j["do_layer_norm_before"] = c.pre_layer_norm;
    j["dropout"] = 0.0;
    j["enable_bias"] = c.enable_bias;
    j["ffn_dim"] = c.ffn;
    j["init_std"] = 0.02;
    j["layer_norm_elementwise_affine"] = true;
    j["layerdrop"] = 0.0;
    j["pad_token_id"] = 1;
    j["word_embed_proj_dim"] = c.word_embed_proj_dim;
    if (!c.tie_word_embeddings) j["tie_word_embeddings"] = false;
  } else {
    j["architectures"] = json::array({"LlamaForCausalLM"});
    j["model_type"] = "llama";
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = c.mlp_bias;
    j["hidden_act"] = "silu";
    j["initializer_range"] = 0.02;
    j["intermediate_size"] = c.ffn;
    j["num_key_value_heads"] = c.n_kv_heads;
    j["pretraining_tp"] = 1;
    j["rms_norm_eps"] = shortest(c.norm_eps);
    j["rope_scaling"] = nullptr;
    j["rope_theta"] = shortest(c.rope_theta);
    j["tie_word_embeddings"] = c.tie_word_embeddings;
  }
  return j.dump(2) + "\n";
}

}  // namespace kvpr
