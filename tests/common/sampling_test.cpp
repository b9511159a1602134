// Request-level sampling fields and the model's end-of-sequence ids: SamplingParams::validate names
// each bad field and its value in one line; eos_token_ids come from generation_config.json when the
// checkpoint has one (an int or a list), else from config.json, and eos_token_id stays the first.
#include "kvpr/common/sampling.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/common/model_config.h"

namespace kvpr {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<std::int32_t>;

const fs::path kGoldenModels = fs::path(KVPR_TEST_DATA) / "golden/models";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// `run` must throw Error(failed) with a one-line message holding every part.
void expect_failure(const std::function<void()>& run, const std::vector<std::string>& parts) {
  try {
    run();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::failed) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const std::string& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << what << " lacks " << part;
    return;
  }
  ADD_FAILURE() << "no kvpr::Error thrown; expected one mentioning " << parts.front();
}

TEST(SamplingParams, DefaultsAndEdgesAreValid) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate(512));
  EXPECT_TRUE(p.greedy());
  p.temperature = 2;
  p.top_k = 1000000;  // more than the vocabulary: all tokens
  p.top_p = 1e-9;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.stop_token_ids = Ids(kMaxStopTokenIds, 511);
  p.logprobs = kMaxLogprobs;
  EXPECT_NO_THROW(p.validate(512));
  EXPECT_FALSE(p.greedy());
  p.top_k = 1;
  EXPECT_TRUE(p.greedy());
}

TEST(SamplingParams, EachBadFieldIsNamed) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const auto bad = [](const std::function<void(SamplingParams&)>& change,
                      const std::vector<std::string>& parts) {
    SamplingParams p;
    change(p);
    expect_failure([&] { p.validate(512); }, parts);
  };
  bad([](auto& p) { p.temperature = -0.5; }, {"temperature", "-0.5"});
  bad([](auto& p) { p.temperature = 2.5; }, {"temperature", "2.5"});
  bad([&](auto& p) { p.temperature = nan; }, {"temperature", "nan"});
  bad([&](auto& p) { p.temperature = inf; }, {"temperature", "inf"});
  bad([](auto& p) { p.top_k = -1; }, {"top_k", "-1"});
  bad([](auto& p) { p.top_p = 0; }, {"top_p", "got 0"});
  bad([](auto& p) { p.top_p = 1.5; }, {"top_p", "1.5"});
  bad([&](auto& p) { p.top_p = nan; }, {"top_p", "nan"});
  bad([](auto& p) { p.presence_penalty = 2.25; }, {"presence_penalty", "2.25"});
  bad([](auto& p) { p.frequency_penalty = -3; }, {"frequency_penalty", "-3"});
  bad([&](auto& p) { p.frequency_penalty = nan; }, {"frequency_penalty", "nan"});
  bad([](auto& p) { p.stop_token_ids = {5, 512}; }, {"stop_token_ids[1]", "512", "512)"});
  bad([](auto& p) { p.stop_token_ids = {-1}; }, {"stop_token_ids[0]", "-1"});
  bad([](auto& p) { p.stop_token_ids = Ids(kMaxStopTokenIds + 1, 3); },
      {"stop_token_ids", "65", "64"});
  bad([](auto& p) { p.logprobs = -2; }, {"logprobs", "-2"});
  bad([](auto& p) { p.logprobs = kMaxLogprobs + 1; }, {"logprobs", "21"});
}

class EosIdsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("kvpr_eos_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    config_ = read_text(kGoldenModels / "llama-2l-h64-mha/config.json");
    write_text(dir_ / "config.json", config_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void set_config_eos(const std::string& value) {
    const std::string from = "\"eos_token_id\": 2";
    std::string text = config_;
    const auto at = text.find(from);
    ASSERT_NE(at, std::string::npos);
    write_text(dir_ / "config.json", text.replace(at, from.size(), "\"eos_token_id\": " + value));
  }
  void set_generation(const std::string& text) {
    write_text(dir_ / "generation_config.json", text);
  }

  fs::path dir_;
  std::string config_;
};

TEST_F(EosIdsTest, GoldenModelsHaveEosTwo) {
  for (const char* model : {"opt-2l-h64", "opt-2l-h64-fp16", "llama-2l-h64-mha"}) {
    const ModelConfig c = load_model_config(kGoldenModels / model);
    EXPECT_EQ(c.eos_token_ids, Ids{2}) << model;
    EXPECT_EQ(c.eos_token_id, 2) << model;
    EXPECT_EQ(c.eos_ids(), Ids{2}) << model;
  }
}

TEST_F(EosIdsTest, GenerationConfigListWins) {
  set_generation(R"({"bos_token_id": 1, "eos_token_id": [7, 2, 9]})");
  const ModelConfig c = load_model_config(dir_);
  EXPECT_EQ(c.eos_token_ids, (Ids{7, 2, 9}));
  EXPECT_EQ(c.eos_token_id, 7);
  // Given the file itself, the directory's generation_config.json still applies.
  EXPECT_EQ(load_model_config(dir_ / "config.json").eos_token_ids, (Ids{7, 2, 9}));
}

TEST_F(EosIdsTest, GenerationConfigIntWins) {
  set_generation(R"({"eos_token_id": 11})");
  EXPECT_EQ(load_model_config(dir_).eos_token_ids, Ids{11});
}

TEST_F(EosIdsTest, GenerationConfigWithoutEosKeepsConfigs) {
  set_config_eos("[3, 4]");
  set_generation(R"({"bos_token_id": 1, "eos_token_id": null})");
  const ModelConfig c = load_model_config(dir_);
  EXPECT_EQ(c.eos_token_ids, (Ids{3, 4}));
  EXPECT_EQ(c.eos_token_id, 3);
  set_generation(R"({"eos_token_id": []})");
  EXPECT_EQ(load_model_config(dir_).eos_token_ids, (Ids{3, 4}));
}

TEST_F(EosIdsTest, ConfigListWithoutGenerationConfig) {
  set_config_eos("[5, 6]");
  const ModelConfig c = load_model_config(dir_);
  EXPECT_EQ(c.eos_token_ids, (Ids{5, 6}));
  EXPECT_EQ(c.eos_token_id, 5);
  // Written back, the list survives.
  EXPECT_EQ(parse_model_config(model_config_to_json(c), "again").eos_token_ids, (Ids{5, 6}));
}

TEST_F(EosIdsTest, BadIdsAreNamed) {
  set_generation(R"({"eos_token_id": [2, "x"]})");
  expect_failure([&] { load_model_config(dir_); },
                 {"generation_config.json", "eos_token_id", "\"x\""});
  set_generation("{not json");
  expect_failure([&] { load_model_config(dir_); }, {"generation_config.json", "not valid JSON"});
  fs::remove(dir_ / "generation_config.json");
  set_config_eos("[1, -4]");
  expect_failure([&] { load_model_config(dir_); }, {"config.json", "eos_token_id", "-4"});
}

TEST(EosIds, ConfigBuiltInCode) {
  ModelConfig c;
  EXPECT_TRUE(c.eos_ids().empty());
  c.eos_token_id = 2;
  EXPECT_EQ(c.eos_ids(), Ids{2});
  c.eos_token_ids = {2, 3};
  EXPECT_EQ(c.eos_ids(), (Ids{2, 3}));
}

}  // namespace
}  // namespace kvpr
