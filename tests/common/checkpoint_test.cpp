// Checkpoints and configs: the golden set loads with the right fields and values, broken copies of
// it are rejected with one line naming file and tensor/value, a sharded split loads identically,
// and the model generator's output loads back through Checkpoint.
#include "kvpr/common/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"

namespace kvpr {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<std::int64_t>;

const fs::path kGoldenModels = fs::path(KVPR_TEST_DATA) / "golden/models";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

float f32_at(const TensorView& t, std::size_t i) {
  float x = 0;
  std::memcpy(&x, t.data + 4 * i, 4);
  return x;
}

// Runs `open`, which must throw an Error of kind `kind` whose message is one line holding `parts`.
void expect_error(const std::function<void()>& open, const std::vector<std::string>& parts,
                  ErrorKind kind = ErrorKind::failed) {
  try {
    open();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), kind) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const std::string& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << what << " lacks " << part;
    return;
  }
  ADD_FAILURE() << "no kvpr::Error thrown; expected one mentioning " << parts.front();
}

// Every field of a config, for comparing two of them in one EXPECT_EQ.
auto fields(const ModelConfig& c) {
  return std::tie(c.arch, c.n_layers, c.h, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn, c.vocab,
                  c.max_positions, c.dtype, c.activation, c.norm_eps, c.bos_token_id,
                  c.eos_token_id, c.pre_layer_norm, c.final_layer_norm, c.word_embed_proj_dim,
                  c.enable_bias, c.rope_theta, c.attention_bias, c.mlp_bias, c.tie_word_embeddings);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("kvpr_ckpt_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A private copy of a golden model to break, fresh on every call.
  fs::path copy_golden(const std::string& model) {
    fs::path out = dir_ / (model + "." + std::to_string(copies_++));
    fs::copy(kGoldenModels / model, out);
    return out;
  }

  fs::path dir_;
  int copies_ = 0;
};

// Rewrites DIR/model.safetensors after `edit` changed its tensor list. The old mapping stays valid
// while the new file is renamed over it, so entries may keep pointing into it.
void rewrite(const fs::path& dir, const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  const SafetensorsFile file(dir / "model.safetensors");
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, view] : file.tensors())
    tensors.push_back({name, view.dtype, view.shape, view.data});
  edit(tensors);
  write_safetensors(dir / "model.safetensors", tensors);
}

void replace_in_config(const fs::path& dir, const std::string& from, const std::string& to) {
  std::string text = read_text(dir / "config.json");
  const auto at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  write_text(dir / "config.json", text.replace(at, from.size(), to));
}

TEST_F(CheckpointTest, GoldenOptLoads) {
  const Checkpoint ckpt(kGoldenModels / "opt-2l-h64");
  const ModelConfig& c = ckpt.config();
  EXPECT_EQ(c.arch, Arch::opt);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.h, 64);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.ffn, 256);
  EXPECT_EQ(c.vocab, 512);
  EXPECT_EQ(c.max_positions, 256);
  EXPECT_EQ(c.dtype, DType::f32);
  EXPECT_EQ(c.activation, Activation::relu);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.bos_token_id, 2);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_TRUE(c.pre_layer_norm);
  EXPECT_TRUE(c.final_layer_norm);
  EXPECT_TRUE(c.enable_bias);
  EXPECT_FALSE(c.has_projections());
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(names::lm_head(c), "model.decoder.embed_tokens.weight");
  EXPECT_FALSE(ckpt.has("lm_head.weight"));
  EXPECT_EQ(expected_tensors(c).size(), 36u);

  const TensorView& embed = ckpt.tensor(names::embed_tokens(c));
  EXPECT_EQ(embed.shape, (Shape{512, 64}));
  EXPECT_EQ(embed.dtype, DType::f32);
  EXPECT_FLOAT_EQ(f32_at(embed, 0), 0.32424604892730713f);
  EXPECT_FLOAT_EQ(f32_at(embed, 1), -0.0028929729014635086f);
  EXPECT_FLOAT_EQ(f32_at(embed, 2), 0.3153136670589447f);
  EXPECT_EQ(ckpt.tensor(names::embed_positions(c)).shape, (Shape{258, 64}));
  const TensorView& fc2_bias = ckpt.tensor(names::layer(c, 1, "fc2") + ".bias");
  EXPECT_EQ(fc2_bias.shape, (Shape{64}));
  EXPECT_FLOAT_EQ(f32_at(fc2_bias, 0), 0.10404752939939499f);
  EXPECT_EQ(ckpt.tensor(names::layer(c, 0, "fc1") + ".weight").shape, (Shape{256, 64}));
  expect_error([&] { ckpt.tensor("lm_head.weight"); },
               {"opt-2l-h64", "no tensor 'lm_head.weight'"});
}

TEST_F(CheckpointTest, GoldenOptFp16Loads) {
  const Checkpoint ckpt(kGoldenModels / "opt-2l-h64-fp16");
  EXPECT_EQ(ckpt.config().dtype, DType::f16);
  const TensorView& embed = ckpt.tensor("model.decoder.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::f16);
  EXPECT_EQ(embed.nbytes, 512u * 64u * 2u);
  std::uint16_t bits[2];
  std::memcpy(bits, embed.data, 4);
  EXPECT_EQ(bits[0], 0x3530);
  EXPECT_EQ(bits[1], 0x99ed);
  // The fp16 file is the fp32 one rounded to nearest even.
  const Checkpoint f32(kGoldenModels / "opt-2l-h64");
  const TensorView& ref = f32.tensor("model.decoder.layers.1.fc2.bias");
  const TensorView& half = ckpt.tensor("model.decoder.layers.1.fc2.bias");
  for (std::size_t i = 0; i < 64; ++i) {
    std::uint16_t h = 0;
    std::memcpy(&h, half.data + 2 * i, 2);
    ASSERT_EQ(h, f32_to_f16(f32_at(ref, i))) << i;
  }
}

TEST_F(CheckpointTest, GoldenLlamaLoads) {
  const Checkpoint ckpt(kGoldenModels / "llama-2l-h64-mha");
  const ModelConfig& c = ckpt.config();
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.h, 64);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.h_kv(), 64);
  EXPECT_EQ(c.ffn, 192);
  EXPECT_EQ(c.activation, Activation::silu);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(expected_tensors(c).size(), 21u);
  EXPECT_EQ(names::lm_head(c), "lm_head.weight");
  EXPECT_FLOAT_EQ(f32_at(ckpt.tensor("lm_head.weight"), 0), -0.21770481765270233f);
  EXPECT_FLOAT_EQ(f32_at(ckpt.tensor(names::final_norm(c) + ".weight"), 0), 1.241889476776123f);
  EXPECT_FLOAT_EQ(f32_at(ckpt.tensor(names::embed_tokens(c)), 2), -0.24387656152248383f);
  EXPECT_EQ(ckpt.tensor(names::layer(c, 1, "down_proj") + ".weight").shape, (Shape{64, 192}));
}

TEST_F(CheckpointTest, NamesFollowHuggingFace) {
  const ModelConfig opt = modelgen::preset("opt-tiny");
  const ModelConfig llama = modelgen::preset("llama-tiny");
  EXPECT_EQ(names::layer(opt, 1, "q_proj"), "model.decoder.layers.1.self_attn.q_proj");
  EXPECT_EQ(names::layer(opt, 0, "o_proj"), "model.decoder.layers.0.self_attn.out_proj");
  EXPECT_EQ(names::layer(opt, 0, "attn_norm"), "model.decoder.layers.0.self_attn_layer_norm");
  EXPECT_EQ(names::layer(opt, 0, "ffn_norm"), "model.decoder.layers.0.final_layer_norm");
  EXPECT_EQ(names::layer(opt, 0, "fc2"), "model.decoder.layers.0.fc2");
  EXPECT_EQ(names::layer(llama, 1, "o_proj"), "model.layers.1.self_attn.o_proj");
  EXPECT_EQ(names::layer(llama, 0, "attn_norm"), "model.layers.0.input_layernorm");
  EXPECT_EQ(names::layer(llama, 0, "ffn_norm"), "model.layers.0.post_attention_layernorm");
  EXPECT_EQ(names::layer(llama, 0, "gate_proj"), "model.layers.0.mlp.gate_proj");
  EXPECT_EQ(names::final_norm(opt), "model.decoder.final_layer_norm");
  EXPECT_EQ(names::final_norm(llama), "model.norm");
  EXPECT_EQ(names::embed_tokens(llama), "model.embed_tokens.weight");
  EXPECT_EQ(names::project_in(opt), "model.decoder.project_in.weight");
  EXPECT_EQ(names::project_out(opt), "model.decoder.project_out.weight");
  expect_error([&] { names::layer(opt, 0, "gate_proj"); }, {"'gate_proj'", "opt"});
  expect_error([&] { names::layer(llama, 0, "fc1"); }, {"'fc1'", "llama"});
  expect_error([&] { names::layer(llama, 0, "nope"); }, {"'nope'"});
  expect_error([&] { names::layer(llama, 2, "q_proj"); }, {"layer 2"});
  expect_error([&] { names::embed_positions(llama); }, {"llama"});
}

TEST_F(CheckpointTest, ExpectedTensorsFollowTheConfig) {
  const ModelConfig opt350 = modelgen::preset("opt-350m");
  const auto specs = expected_tensors(opt350);
  const auto shape_of = [](const std::vector<TensorSpec>& list, const std::string& name) {
    for (const TensorSpec& s : list) {
      if (s.name == name) return s.shape;
    }
    return Shape{-1};
  };
  EXPECT_EQ(shape_of(specs, "model.decoder.embed_tokens.weight"), (Shape{50272, 512}));
  EXPECT_EQ(shape_of(specs, "model.decoder.project_in.weight"), (Shape{1024, 512}));
  EXPECT_EQ(shape_of(specs, "model.decoder.project_out.weight"), (Shape{512, 1024}));
  EXPECT_EQ(shape_of(specs, "model.decoder.embed_positions.weight"), (Shape{2050, 1024}));
  EXPECT_EQ(shape_of(specs, "model.decoder.final_layer_norm.weight"), (Shape{-1}));  // post-LN
  EXPECT_EQ(specs.size(), 4u + 24u * 16u);
  const ModelConfig gqa = modelgen::preset("tinyllama-1.1b");
  const auto llama_specs = expected_tensors(gqa);
  EXPECT_EQ(shape_of(llama_specs, "model.layers.21.self_attn.k_proj.weight"), (Shape{256, 2048}));
  EXPECT_EQ(shape_of(llama_specs, "model.layers.0.mlp.up_proj.weight"), (Shape{5632, 2048}));
  EXPECT_EQ(shape_of(llama_specs, "lm_head.weight"), (Shape{32000, 2048}));
  ModelConfig biased = gqa;
  biased.attention_bias = biased.mlp_bias = true;
  biased.tie_word_embeddings = true;
  const auto biased_specs = expected_tensors(biased);
  EXPECT_EQ(shape_of(biased_specs, "model.layers.0.self_attn.v_proj.bias"), (Shape{256}));
  EXPECT_EQ(shape_of(biased_specs, "model.layers.0.mlp.down_proj.bias"), (Shape{2048}));
  EXPECT_EQ(shape_of(biased_specs, "lm_head.weight"), (Shape{-1}));
  EXPECT_EQ(biased_specs.size(), llama_specs.size() - 1 + std::size_t{22} * 7);
}

TEST_F(CheckpointTest, ConfigJsonRoundTrips) {
  for (const std::string& name : modelgen::preset_names()) {
    SCOPED_TRACE(name);
    const ModelConfig c = modelgen::preset(name);
    EXPECT_EQ(fields(parse_model_config(model_config_to_json(c), name)), fields(c));
  }
  for (const char* model : {"opt-2l-h64", "opt-2l-h64-fp16", "llama-2l-h64-mha"}) {
    SCOPED_TRACE(model);
    const ModelConfig c =
        load_model_config(kGoldenModels / model);  // a directory names its config.json
    EXPECT_EQ(fields(parse_model_config(model_config_to_json(c), model)), fields(c));
  }
  EXPECT_NE(model_config_to_json(modelgen::preset("llama-tiny")).find(R"("rms_norm_eps": 1e-05)"),
            std::string::npos);
}

TEST_F(CheckpointTest, BadConfigsAreRejected) {
  const std::string llama = read_text(kGoldenModels / "llama-2l-h64-mha/config.json");
  const auto with = [&](const std::string& from, const std::string& to) {
    std::string text = llama;
    const auto at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? text : text.replace(at, from.size(), to);
  };
  const auto bad = [](const std::string& text, const std::vector<std::string>& parts,
                      ErrorKind kind = ErrorKind::failed) {
    expect_error([&] { parse_model_config(text, "DIR/config.json"); }, parts, kind);
  };
  bad("{", {"DIR/config.json", "not valid JSON"});
  bad("[]", {"DIR/config.json", "not a JSON object"});
  bad(with(R"("model_type": "llama")", R"("model_type": "gpt2")"), {"unknown architecture 'gpt2'"});
  bad(R"({"architectures": ["BertModel"]})", {"unknown architecture 'BertModel'"});
  bad(with(R"("hidden_size": 64,)", ""), {"field 'hidden_size' is missing"});
  bad(with(R"("hidden_size": 64)", R"("hidden_size": -64)"), {"'hidden_size'", "-64"});
  bad(with(R"("hidden_size": 64)", R"("hidden_size": "64")"), {"'hidden_size'", "not an integer"});
  bad(with(R"("hidden_size": 64)", R"("hidden_size": 66)"),
      {"hidden_size 66", "num_attention_heads 4"});
  bad(with(R"("num_key_value_heads": 4)", R"("num_key_value_heads": 3)"),
      {"num_key_value_heads 3"});
  bad(with(R"("torch_dtype": "float32")", R"("torch_dtype": "int8")"),
      {"unknown torch_dtype 'int8'"});
  bad(with(R"("hidden_act": "silu")", R"("hidden_act": "gelu")"), {"'hidden_act'", "'gelu'"});
  bad(with(R"("rms_norm_eps": 1e-05)", R"("rms_norm_eps": 0)"), {"'rms_norm_eps'"});
  bad(with(R"("rope_scaling": null)", R"("rope_scaling": {"type": "linear", "factor": 2.0})"),
      {"'rope_scaling'", "linear"}, ErrorKind::unimplemented);
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  bad(with(R"("rope_scaling": null)", R"("rope_scaling": )" + deep), {"'rope_scaling'", "[[...]]"},
      ErrorKind::unimplemented);
  bad(with(R"("hidden_size": 64)", R"("hidden_size": 99999999999)"),
      {"'hidden_size'", "99999999999"});
  const std::string opt = read_text(kGoldenModels / "opt-2l-h64/config.json");
  std::string gelu_new = opt;
  gelu_new.replace(gelu_new.find(R"("relu")"), 6, R"("gelu_new")");
  bad(gelu_new, {"'activation_function'", "'gelu_new'"});
  expect_error([&] { load_model_config(dir_ / "absent"); }, {"absent", "cannot open"});
}

TEST_F(CheckpointTest, WrongShapeNamesFileTensorAndBothShapes) {
  const fs::path d = copy_golden("llama-2l-h64-mha");
  rewrite(d, [](auto& t) {
    for (auto& x : t) {
      if (x.name == "model.layers.0.self_attn.k_proj.weight") x.shape = {64, 32};
    }
  });
  try {
    Checkpoint ckpt(d);
    ADD_FAILURE() << "wrong shape accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              (d / "model.safetensors").string() +
                  ": tensor 'model.layers.0.self_attn.k_proj.weight': shape [64,32] but the config "
                  "needs [64,64]");
  }
}

TEST_F(CheckpointTest, BrokenCheckpointsAreRejected) {
  static const std::vector<float> zeros(std::size_t{64} * 64, 0.0f);  // data for added tensors
  const auto add = [](std::string name, Shape shape) {
    return [=](const fs::path& d) {
      rewrite(d, [&](auto& t) { t.push_back({name, DType::f32, shape, zeros.data()}); });
    };
  };
  struct Case {
    std::function<void(const fs::path&)> do_break;
    std::string file;  // the file the message must name, relative to the checkpoint
    std::string part;
  };
  const std::vector<Case> cases = {
      {[](const fs::path& d) {
         rewrite(d, [](auto& t) {
           std::erase_if(t, [](auto& x) { return x.name == "model.decoder.layers.1.fc1.bias"; });
         });
       },
       "model.safetensors", "tensor 'model.decoder.layers.1.fc1.bias' [256] is missing"},
      {add("model.decoder.layers.0.extra.weight", {4}), "model.safetensors",
       "unexpected tensor 'model.decoder.layers.0.extra.weight'"},
      {add("lm_head.weight", {512, 4}), "model.safetensors",
       "'lm_head.weight': shape [512,4] but the config needs [512,64]"},
      {[](const fs::path& d) { fs::remove(d / "model.safetensors"); }, "",
       "neither model.safetensors"},
      {[](const fs::path& d) { fs::resize_file(d / "model.safetensors", 1000); },
       "model.safetensors", "header length 3848 runs past the end"},
      {[](const fs::path& d) { replace_in_config(d, R"("ffn_dim": 256,)", ""); }, "config.json",
       "field 'ffn_dim' is missing"},
      {[](const fs::path& d) { replace_in_config(d, R"("opt")", R"("xyz")"); }, "config.json",
       "unknown architecture 'xyz'"},
      {[](const fs::path& d) { replace_in_config(d, R"("float32")", R"("float8")"); },
       "config.json", "unknown torch_dtype 'float8'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.part);
    const fs::path d = copy_golden("opt-2l-h64");
    c.do_break(d);
    expect_error([&] { Checkpoint ckpt(d); }, {(c.file.empty() ? d : d / c.file).string(), c.part});
  }
}

// Variants seen in real exports: OPT saved from a bare OPTModel (no "model." prefix) and LLaMA
// with RoPE's derived inv_freq buffers.
TEST_F(CheckpointTest, ToleratedExportVariants) {
  const fs::path opt = copy_golden("opt-2l-h64");
  rewrite(opt, [](auto& t) {
    for (auto& x : t) x.name = x.name.substr(std::string("model.").size());
  });
  const Checkpoint bare(opt);
  EXPECT_EQ(bare.tensor("model.decoder.layers.0.fc1.weight").name,
            "model.decoder.layers.0.fc1.weight");
  static const std::vector<float> inv_freq(8, 1.0f);
  const fs::path llama = copy_golden("llama-2l-h64-mha");
  rewrite(llama, [](auto& t) {
    t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::f32, {8}, inv_freq.data()});
  });
  const Checkpoint with_buffers(llama);
  EXPECT_FALSE(with_buffers.has("model.layers.0.self_attn.rotary_emb.inv_freq"));
}

// Splits a golden model's tensors over two shards plus an index, as save_pretrained does.
void shard(const fs::path& golden, const fs::path& out) {
  fs::create_directories(out);
  fs::copy_file(golden / "config.json", out / "config.json");
  const SafetensorsFile file(golden / "model.safetensors");
  std::vector<TensorToWrite> parts[2];
  std::string map;
  std::size_t i = 0;
  for (const auto& [name, view] : file.tensors()) {
    const std::size_t k = i++ < file.tensors().size() / 2 ? 0 : 1;
    parts[k].push_back({name, view.dtype, view.shape, view.data});
    map += str(map.empty() ? "" : ",", "\n    \"", name, R"(": "model-0000)", k + 1,
               R"(-of-00002.safetensors")");
  }
  write_safetensors(out / "model-00001-of-00002.safetensors", parts[0]);
  write_safetensors(out / "model-00002-of-00002.safetensors", parts[1]);
  write_text(out / "model.safetensors.index.json",
             "{\n  \"metadata\": {\"total_size\": 1},\n  \"weight_map\": {" + map + "\n  }\n}\n");
}

TEST_F(CheckpointTest, ShardedCheckpointMatchesSingleFile) {
  for (const char* model : {"opt-2l-h64", "llama-2l-h64-mha"}) {
    SCOPED_TRACE(model);
    const fs::path d = dir_ / model;
    shard(kGoldenModels / model, d);
    const Checkpoint single(kGoldenModels / model);
    const Checkpoint sharded(d);
    EXPECT_EQ(fields(sharded.config()), fields(single.config()));
    for (const TensorSpec& spec : expected_tensors(single.config())) {
      const TensorView& a = single.tensor(spec.name);
      const TensorView& b = sharded.tensor(spec.name);
      ASSERT_EQ(a.shape, b.shape) << spec.name;
      ASSERT_EQ(a.nbytes, b.nbytes) << spec.name;
      ASSERT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << spec.name;
    }
  }
}

TEST_F(CheckpointTest, BrokenShardsAreRejected) {
  const fs::path d = dir_ / "sharded";
  shard(kGoldenModels / "opt-2l-h64", d);
  const fs::path index = d / "model.safetensors.index.json";
  const std::string good = read_text(index);
  // Writes the good index with every `from` replaced by `to`.
  const auto with_index = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    for (std::size_t at = text.find(from); at != std::string::npos;
         at = text.find(from, at + to.size())) {
      text.replace(at, from.size(), to);
    }
    write_text(index, text);
  };
  with_index("model-00002-of-00002", "model-00003-of-00002");
  expect_error([&] { Checkpoint c(d); },
               {index.string(), "shard 'model-00003-of-00002.safetensors'", "does not exist"});
  // Move one tensor's index entry to the other shard: missing from its shard, unlisted in its own.
  with_index(R"("model.decoder.embed_tokens.weight": "model-00001)",
             R"("model.decoder.embed_tokens.weight": "model-00002)");
  expect_error([&] { Checkpoint c(d); }, {"'model.decoder.embed_tokens.weight'", "model-0000"});
  with_index(R"("model.decoder.embed_tokens.weight")", R"("model.decoder.embed_tokens.weight.x")");
  expect_error([&] { Checkpoint c(d); }, {"model-00001-of-00002.safetensors", "not in this shard"});
  with_index(R"("model-00001-of-00002.safetensors")", R"("../model-00001-of-00002.safetensors")");
  expect_error([&] { Checkpoint c(d); }, {index.string(), "bad shard name"});
  write_text(index, R"({"weight_map": 3})");
  expect_error([&] { Checkpoint c(d); }, {index.string(), "weight_map"});
}

TEST_F(CheckpointTest, OptWithKeptLmHeadUsesIt) {
  const fs::path d = copy_golden("opt-2l-h64");
  rewrite(d, [](auto& t) {
    for (const auto& x : std::vector<TensorToWrite>(t)) {
      if (x.name == "model.decoder.embed_tokens.weight")
        t.push_back({"lm_head.weight", x.dtype, x.shape, x.data});
    }
  });
  const Checkpoint ckpt(d);
  EXPECT_FALSE(ckpt.config().tie_word_embeddings);
  EXPECT_EQ(names::lm_head(ckpt.config()), "lm_head.weight");
  EXPECT_EQ(ckpt.tensor("lm_head.weight").shape, (Shape{512, 64}));
}

TEST_F(CheckpointTest, GeneratedModelsLoadBack) {
  struct Gen {
    std::string preset;
    std::int64_t layers;
  };
  for (const Gen& g :
       {Gen{"opt-tiny", 0}, Gen{"llama-tiny-gqa", 0}, Gen{"opt-350m", 2}, Gen{"llama-tiny", 0}}) {
    SCOPED_TRACE(g.preset);
    modelgen::GenOptions options;
    options.config = modelgen::preset(g.preset);
    if (g.layers != 0) options.config.n_layers = g.layers;  // what --layers does
    options.out = dir_ / g.preset;
    options.seed = 7;
    options.write_tokenizer = false;
    std::uint64_t last = 0, total = 0;
    options.progress = [&](std::uint64_t done, std::uint64_t all) {
      EXPECT_GE(done, last);
      last = done;
      total = all;
    };
    modelgen::generate_model(options);
    EXPECT_EQ(last, total);
    const Checkpoint ckpt(options.out);
    EXPECT_EQ(fields(ckpt.config()), fields(options.config));
    EXPECT_TRUE(fs::exists(options.out / "generation_config.json"));
    std::uint64_t sum = 0;
    for (const TensorSpec& spec : expected_tensors(ckpt.config())) {
      EXPECT_EQ(ckpt.tensor(spec.name).dtype, options.config.dtype) << spec.name;
      sum += ckpt.tensor(spec.name).nbytes;
    }
    EXPECT_EQ(sum, total);
    // Statistics of the draws: norm weights near 1, linear weights with std 1/sqrt(in).
    const ModelConfig& c = ckpt.config();
    const TensorView& norm = ckpt.tensor(names::layer(c, 0, "attn_norm") + ".weight");
    const TensorView& q = ckpt.tensor(names::layer(c, 1, "q_proj") + ".weight");
    std::vector<float> nv(static_cast<std::size_t>(norm.numel())),
        qv(static_cast<std::size_t>(q.numel()));
    convert(norm.data, norm.dtype, nv.data(), DType::f32, nv.size());
    convert(q.data, q.dtype, qv.data(), DType::f32, qv.size());
    double mean = 0, sq = 0;
    for (const float x : nv) mean += x / static_cast<double>(nv.size());
    for (const float x : qv) sq += static_cast<double>(x) * x / static_cast<double>(qv.size());
    EXPECT_NEAR(mean, 1.0, 0.01);
    EXPECT_NEAR(std::sqrt(sq) * std::sqrt(static_cast<double>(c.h)), 1.0, 0.05);
  }
}

TEST_F(CheckpointTest, GenerationIsDeterministicPerSeed) {
  const auto gen = [&](const std::string& name, std::uint64_t seed) {
    modelgen::GenOptions options;
    options.config = modelgen::preset("llama-tiny-gqa");
    options.out = dir_ / name;
    options.seed = seed;
    options.write_tokenizer = false;
    modelgen::generate_model(options);
    return read_text(options.out / "model.safetensors");
  };
  const std::string a = gen("a", 1), b = gen("b", 1), c = gen("c", 2);
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.size(), c.size());
  EXPECT_FALSE(a == c);
}

TEST_F(CheckpointTest, GeneratorRejectsBadRequests) {
  expect_error([] { modelgen::preset("gpt-5"); }, {"'gpt-5'", "opt-tiny"});
  modelgen::GenOptions options;
  options.config = modelgen::preset("llama-tiny");
  options.config.n_kv_heads = 3;
  options.out = dir_ / "bad";
  expect_error([&] { modelgen::generate_model(options); }, {"num_key_value_heads 3"});
  EXPECT_FALSE(fs::exists(options.out));
}

TEST_F(CheckpointTest, GeneratorWritesTokenizer) {
  modelgen::GenOptions options;
  options.config = modelgen::preset("opt-tiny");
  options.out = dir_ / "with_tokenizer";
  modelgen::generate_model(options);
  EXPECT_TRUE(fs::exists(options.out / "tokenizer.json"));
}

}  // namespace
}  // namespace kvpr
