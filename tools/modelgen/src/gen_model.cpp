// The model generator: real models' shapes with seeded random weights, so that tests, benchmarks
// and users can run opt-6.7b-sized workloads without a download.
//
// Weights are streamed: each tensor is drawn in chunks, converted to the config's dtype and
// appended to a SafetensorsWriter, so memory stays at one chunk even for a 13 GB fp16 file. Every
// tensor draws from its own stream seeded by (seed, name), so the output is a pure function of
// the config and the seed, whatever order the tensors are written in.
//
// Initialisation keeps activations O(1) through depth: linear weights N(0, 1/in_features); the
// projections that write into the residual stream (o_proj/out_proj, fc2, down_proj) are further
// scaled by 1/sqrt(2·layers) so the pre-LN residual grows to O(1), not O(layers); norm weights
// 1 + N(0, 0.02²); biases N(0, 0.02²); untied embeddings N(0, 1); an embedding that is also the
// LM head (tied) N(0, 1/dim) so logits are O(1).
#include "kvpr/modelgen/gen_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/common/safetensors.h"
#include "kvpr/common/tokenizer.h"

namespace kvpr::modelgen {

namespace {

struct Preset {
  const char* name;
  ModelConfig config;
};

ModelConfig opt(std::int64_t h, std::int64_t layers, std::int64_t heads, std::int64_t ffn,
                std::int64_t vocab, std::int64_t max_positions, DType dtype) {
  ModelConfig c;
  c.arch = Arch::opt;
  c.h = h;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = heads;
  c.head_dim = h / heads;
  c.ffn = ffn;
  c.vocab = vocab;
  c.max_positions = max_positions;
  c.dtype = dtype;
  c.activation = Activation::relu;
  c.norm_eps = 1e-5f;
  c.bos_token_id = 2;
  c.eos_token_id = 2;
  c.word_embed_proj_dim = h;
  c.tie_word_embeddings = true;  // OPT's head is the token embedding
  return c;
}

ModelConfig llama(std::int64_t h, std::int64_t layers, std::int64_t heads, std::int64_t kv_heads,
                  std::int64_t ffn, std::int64_t vocab, std::int64_t max_positions, DType dtype) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.h = h;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = h / heads;
  c.ffn = ffn;
  c.vocab = vocab;
  c.max_positions = max_positions;
  c.dtype = dtype;
  c.activation = Activation::silu;
  c.norm_eps = 1e-5f;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.enable_bias = false;
  c.word_embed_proj_dim = h;
  return c;
}

// Real models ship fp16 (or bf16) weights; the tiny presets are fp32 like the golden set.
std::vector<Preset> presets() {
  ModelConfig opt_350m = opt(1024, 24, 16, 4096, 50272, 2048, DType::f16);
  opt_350m.word_embed_proj_dim = 512;
  opt_350m.pre_layer_norm = false;
  opt_350m.final_layer_norm = false;
  return {
      {"opt-tiny", opt(64, 2, 4, 256, 512, 256, DType::f32)},
      {"opt-125m", opt(768, 12, 12, 3072, 50272, 2048, DType::f16)},
      {"opt-350m", opt_350m},
      {"opt-1.3b", opt(2048, 24, 32, 8192, 50272, 2048, DType::f16)},
      {"opt-6.7b", opt(4096, 32, 32, 16384, 50272, 2048, DType::f16)},
      {"llama-tiny", llama(64, 2, 4, 4, 192, 512, 256, DType::f32)},
      {"llama-tiny-gqa", llama(64, 2, 8, 2, 192, 512, 256, DType::f32)},
      {"llama2-7b", llama(4096, 32, 32, 32, 11008, 32000, 4096, DType::f16)},
      {"tinyllama-1.1b", llama(2048, 22, 32, 4, 5632, 32000, 2048, DType::f16)},
  };
}

// splitmix64: tiny state, full 64-bit output, good enough for weights and fast.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Approximately N(0, 1): the sum of four 16-bit uniforms (Irwin–Hall), centred and scaled.
  // Bounded by ±3.46, which is all random weights need, and ~10x cheaper than Box–Muller.
  float normal() {
    const std::uint64_t r = next();
    const auto sum = static_cast<std::int64_t>((r & 0xffff) + ((r >> 16) & 0xffff) +
                                               ((r >> 32) & 0xffff) + (r >> 48));
    return static_cast<float>(sum - std::int64_t{2} * 65535) * (1.7320508f / 65536.0f);
  }

 private:
  std::uint64_t state_;
};

std::uint64_t tensor_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (const char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  return Rng(seed ^ h).next();
}

struct Init {
  float mean = 0.0f;
  float std = 1.0f;
};

// How a tensor is drawn, from its name and shape (see the file comment).
Init init_for(const ModelConfig& c, const std::string& name,
              const std::vector<std::int64_t>& shape) {
  if (shape.size() == 1) {
    if (name.ends_with("norm.weight")) return {1.0f, 0.02f};
    return {0.0f, 0.02f};  // biases
  }
  const auto in = static_cast<float>(shape.back());
  if (name == names::embed_tokens(c) ||
      (c.arch == Arch::opt && name == names::embed_positions(c))) {
    return {0.0f, c.tie_word_embeddings ? 1.0f / std::sqrt(in) : 1.0f};
  }
  float std = 1.0f / std::sqrt(in);
  for (const char* residual : {"o_proj.", "out_proj.", "fc2.", "down_proj."}) {
    if (name.find(residual) != std::string::npos) {
      std /= std::sqrt(2.0f * static_cast<float>(c.n_layers));
    }
  }
  return {0.0f, std};
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) fail(path.string(), ": write failed");
}

std::string generation_config_json(const ModelConfig& c) {
  std::string pad = c.arch == Arch::opt ? "  \"pad_token_id\": 1,\n" : "";
  return str("{\n  \"_from_model_config\": true,\n  \"bos_token_id\": ", c.bos_token_id,
             ",\n  \"eos_token_id\": ", c.eos_token_id, ",\n", pad,
             "  \"transformers_version\": \"4.36.2\"\n}\n");
}

// Streams every tensor of `c` into DIR/model.safetensors.
void write_weights(const ModelConfig& c, const GenOptions& options) {
  std::vector<TensorToWrite> layout;
  for (TensorSpec& spec : expected_tensors(c))
    layout.push_back({spec.name, c.dtype, spec.shape, nullptr});
  SafetensorsWriter writer(options.out / "model.safetensors", std::move(layout));
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  std::vector<float> values;
  std::vector<std::byte> bytes(kChunk * size_of(c.dtype));
  if (options.progress) options.progress(0, writer.data_bytes());
  for (const TensorToWrite& t : writer.layout()) {
    const Init init = init_for(c, t.name, t.shape);
    Rng rng(tensor_seed(options.seed, t.name));
    std::uint64_t numel = 1;
    for (const std::int64_t d : t.shape) numel *= static_cast<std::uint64_t>(d);
    for (std::uint64_t done = 0; done < numel;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, numel - done));
      values.resize(n);
      for (float& v : values) v = init.mean + init.std * rng.normal();
      convert(values.data(), DType::f32, bytes.data(), c.dtype, n);
      writer.append(bytes.data(), n * size_of(c.dtype));
      done += n;
      if (options.progress) options.progress(writer.written(), writer.data_bytes());
    }
  }
  writer.finish();
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const Preset& p : presets()) out.emplace_back(p.name);
  return out;
}

ModelConfig preset(const std::string& name) {
  std::string known;
  for (const Preset& p : presets()) {
    if (name == p.name) return p.config;
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  }
  fail("unknown model preset ", quoted_name(name), " (known: ", known, ")");
}

void generate_model(const GenOptions& options) {
  // Validate through the same parser a reader will use, before anything is written; the parsed
  // config (head_dim recomputed etc.) is what the weights follow.
  const std::string config_json = model_config_to_json(options.config);
  const ModelConfig c = parse_model_config(config_json, (options.out / "config.json").string());
  std::error_code ec;
  std::filesystem::create_directories(options.out, ec);
  if (ec) fail(options.out.string(), ": cannot create directory: ", ec.message());
  write_text(options.out / "config.json", config_json);
  write_text(options.out / "generation_config.json", generation_config_json(c));
  write_weights(c, options);
  if (options.write_tokenizer) {
    const TokenizerKind kind =
        c.arch == Arch::opt ? TokenizerKind::byte_bpe : TokenizerKind::sentencepiece;
    write_generated_tokenizer(options.out, kind, c.vocab, options.seed);
  }
}

}  // namespace kvpr::modelgen
