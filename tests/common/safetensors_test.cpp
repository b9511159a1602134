// safetensors: write/read round trips (byte-identical to the golden files), and a corpus of broken
// files built here in a temp dir, each of which must fail with one line naming file and tensor.
#include "kvpr/common/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("kvpr_st_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file of: 8-byte length `n`, the header text, `data` zero bytes. Unless `n` is given, the
  // header is padded with spaces to a multiple of 8 as writers do, and `n` is its length.
  fs::path raw(const std::string& name, std::string header, std::size_t data,
               std::uint64_t n = UINT64_MAX) {
    fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    if (n == UINT64_MAX) {
      header.append((8 - header.size() % 8) % 8, ' ');
      n = header.size();
    }
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
    out << header << std::string(data, '\0');
    return path;
  }

  fs::path dir_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `open`, which must throw an Error of kind failed whose message is one line holding `parts`.
void expect_error(const std::function<void()>& open, const std::vector<std::string>& parts) {
  try {
    open();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const std::string& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << what << " lacks " << part;
    return;
  }
  ADD_FAILURE() << "no kvpr::Error thrown; expected one mentioning " << parts.front();
}

TEST_F(SafetensorsTest, WriteThenReadMixedDtypesStaysAligned) {
  const std::vector<float> a = {1.0f, -2.0f, 3.5f};
  const std::vector<std::uint16_t> b = {0x3c00, 0x4000, 0x4200};  // three f16: 6 bytes
  const std::vector<std::uint16_t> c = {0x3f80};                  // one bf16
  const fs::path path = dir_ / "mixed.safetensors";
  write_safetensors(path, {{"b.half", DType::f16, {3}, b.data()},
                           {"a.float", DType::f32, {1, 3}, a.data()},
                           {"c.brain", DType::bf16, {}, c.data()},
                           {"d.empty", DType::f32, {0, 4}, nullptr}});
  const std::string bytes = read_bytes(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string meta = R"({"__metadata__":{"format":"pt"})";
  EXPECT_EQ(bytes.compare(8, meta.size(), meta), 0);

  const SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 4u);
  const TensorView& ta = file.tensors().at("a.float");
  EXPECT_EQ(ta.dtype, DType::f32);
  EXPECT_EQ(ta.shape, (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(ta.numel(), 3);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(ta.data) % 4, 0u);
  EXPECT_EQ(std::memcmp(ta.data, static_cast<const void*>(a.data()), 12), 0);
  const TensorView& tb = file.tensors().at("b.half");
  EXPECT_EQ(tb.nbytes, 6u);
  EXPECT_EQ(std::memcmp(tb.data, b.data(), 6), 0);
  const TensorView& tc = file.tensors().at("c.brain");
  EXPECT_TRUE(tc.shape.empty());
  EXPECT_EQ(tc.numel(), 1);
  EXPECT_EQ(std::memcmp(tc.data, c.data(), 2), 0);
  EXPECT_EQ(file.tensors().at("d.empty").nbytes, 0u);
}

// Re-writing a golden file from its own tensors reproduces it byte for byte: same header
// spelling, ordering, padding and data layout as the reference writer.
TEST_F(SafetensorsTest, RewritingGoldenFilesIsByteIdentical) {
  for (const char* model : {"opt-2l-h64", "opt-2l-h64-fp16", "llama-2l-h64-mha"}) {
    const fs::path golden =
        fs::path(KVPR_TEST_DATA) / "golden/models" / model / "model.safetensors";
    const SafetensorsFile file(golden);
    std::vector<TensorToWrite> tensors;
    for (const auto& [name, view] : file.tensors())
      tensors.push_back({name, view.dtype, view.shape, view.data});
    const fs::path copy = dir_ / (std::string(model) + ".safetensors");
    write_safetensors(copy, tensors);
    EXPECT_TRUE(read_bytes(copy) == read_bytes(golden)) << model;
  }
}

TEST_F(SafetensorsTest, EmptyAndMissingFiles) {
  const fs::path empty = raw("empty.safetensors", "", 0, 0);
  fs::resize_file(empty, 0);
  expect_error([&] { SafetensorsFile f(empty); }, {"empty.safetensors", "0 bytes"});
  expect_error([&] { SafetensorsFile f(dir_ / "nope.safetensors"); },
               {"nope.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile f(dir_); }, {dir_.string(), "not a regular file"});
  const SafetensorsFile no_tensors(raw("none.safetensors", "{}      ", 0));
  EXPECT_TRUE(no_tensors.tensors().empty());
}

TEST_F(SafetensorsTest, BrokenFilesAreRejectedWithOneLine) {
  const std::string f32x2 = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";  // 8 bytes
  // Nested deeper than any recursive printer's stack could take.
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  struct Case {
    std::string file;
    std::string header;
    std::size_t data;
    std::uint64_t n;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"truncated", "", 0, UINT64_MAX, {"5 bytes", "too short"}},
      {"past_end", "{}", 0, 4096, {"header length 4096", "past the end"}},
      {"absurd", "{}", 0, std::uint64_t{1} << 60, {"header length 1152921504606846976", "absurd"}},
      {"not_json", R"({"w": [1, 2)", 0, UINT64_MAX, {"not valid JSON"}},
      {"not_object", "[1,2,3]", 0, UINT64_MAX, {"not a JSON object"}},
      {"entry_not_object", R"({"w":5})", 0, UINT64_MAX, {"'w'", "not an object"}},
      {"no_dtype",
       R"({"w":{"shape":[2],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "missing dtype"}},
      {"no_shape",
       R"({"w":{"dtype":"F32","data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "missing shape"}},
      {"no_offsets",
       R"({"w":{"dtype":"F32","shape":[2]}})",
       8,
       UINT64_MAX,
       {"'w'", "missing data_offsets"}},
      {"unknown_dtype",
       R"({"w":{"dtype":"I8","shape":[8],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"tensor 'w': unknown dtype 'I8'"}},
      {"negative_dim",
       R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "bad dimension -2"}},
      {"fractional_dim",
       R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "bad dimension 2.5"}},
      {"shape_vs_bytes",
       R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "shape [3] of F32", "[0,8]"}},
      {"huge_shape",
       R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})",
       8,
       UINT64_MAX,
       {"'w'", "does not match"}},
      {"offsets_out_of_range",
       R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       8,
       UINT64_MAX,
       {"'w'", "[8,16]", "past the data section (8 bytes)"}},
      {"offsets_reversed",
       R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
       8,
       UINT64_MAX,
       {"'w'", "bad data_offsets [8,0]"}},
      {"overlap",
       "{" + f32x2 + R"(,"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12,
       UINT64_MAX,
       {"'v'", "overlaps tensor 'w'"}},
      {"misaligned",
       R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
       8,
       UINT64_MAX,
       {"'w'", "not aligned"}},
      {"deep_dtype",
       R"({"w":{"dtype":)" + deep + R"(,"shape":[1],"data_offsets":[0,4]}})",
       8,
       UINT64_MAX,
       {"'w'", "unknown dtype [[...]]"}},
      {"newline_in_name",
       R"({"a\nb":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})",
       8,
       UINT64_MAX,
       {"'a\\x0ab'", "unknown dtype"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const fs::path path = raw(c.file + ".safetensors", c.header, c.data, c.n);
    if (c.file == "truncated") fs::resize_file(path, 5);
    std::vector<std::string> parts = c.parts;
    parts.push_back(path.string());
    expect_error([&] { SafetensorsFile f(path); }, parts);
  }
}

TEST_F(SafetensorsTest, MetadataIsIgnored) {
  const SafetensorsFile file(raw(
      "meta.safetensors",
      R"({"__metadata__":{"format":"pt","x":"y"},"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}})",
      8));
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.tensors().at("w").dtype, DType::bf16);
}

TEST_F(SafetensorsTest, WriterChecksByteCountsAndLeavesNoPartialFile) {
  const fs::path path = dir_ / "stream.safetensors";
  const float x[4] = {1, 2, 3, 4};
  {
    SafetensorsWriter writer(path, {{"x", DType::f32, {4}, nullptr}});
    EXPECT_EQ(writer.data_bytes(), 16u);
    writer.append(x, 8);
    expect_error([&] { writer.append(x, 16); }, {"stream.safetensors", "24 data bytes"});
    expect_error([&] { writer.finish(); }, {"stream.safetensors", "only 8 of 16"});
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(dir_ / "stream.safetensors.tmp"));
  {
    SafetensorsWriter writer(path, {{"x", DType::f32, {4}, nullptr}});
    writer.append(x, 4);
    writer.append(x + 1, 12);
    writer.finish();
  }
  const SafetensorsFile file(path);
  EXPECT_EQ(std::memcmp(file.tensors().at("x").data, static_cast<const void*>(x), 16), 0);
  expect_error(
      [&] {
        write_safetensors(path, {{"x", DType::f32, {1}, x}, {"x", DType::f32, {1}, x}});
      },
      {"'x'", "listed twice"});
  expect_error(
      [&] {
        write_safetensors(path, {{"x", DType::f32, {-1}, x}});
      },
      {"'x'", "bad shape [-1]"});
}

}  // namespace
}  // namespace kvpr
