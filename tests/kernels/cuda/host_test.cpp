// The CUDA backend's host side, which runs on any machine: how it fails without a device, and the
// attention planner (the kernel's limits, grouping segments by query row, the token split) that
// turns a call into the tables attention.cu reads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "attention_plan.h"
#include "cuda_test_util.h"
#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::kernels::cuda {
namespace {

TEST(CudaBackend, IsRegisteredByName) {
  const auto names = backend_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "cuda"), names.end());
}

TEST(CudaBackend, WithoutADeviceFailsAtOnceInOneLine) {
  if (!cuda_test::no_cuda_reason()) GTEST_SKIP() << "a CUDA device is present here";
  BackendOptions options;
  options.name = "cuda";
  try {
    make_backend(options);
    FAIL() << "make_backend(cuda) succeeded without a device";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::unimplemented);
    EXPECT_NE(message.find("backend 'cuda'"), std::string::npos) << message;
    EXPECT_NE(message.find("cudaGetDeviceCount"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    std::printf("[cuda] without a device: %s\n", message.c_str());
  }
}

// Fake device tensors: the planner only reads shapes and pointers, never the data.
struct Fake {
  std::vector<float> storage = std::vector<float>(1 << 16);
  Tensor t(std::int64_t rows, std::int64_t cols, std::size_t offset = 0, DType dtype = DType::f32) {
    return Tensor{storage.data() + offset, dtype, rows, cols};
  }
};

TEST(AttentionPlan, GroupsSegmentsByQueryKeepingTheirOrder) {
  Fake f;
  const AttnShape shape{4, 2, 16, 0.25f};  // GQA: h_kv = 32
  const Tensor q = f.t(3, 64);
  std::vector<AttnSegment> segs = {
      {2, f.t(5, 32, 100), f.t(5, 32, 200)},   // row 2, first
      {0, f.t(7, 32, 300), f.t(7, 32, 400)},   // row 0, first
      {2, f.t(1, 32, 500), f.t(1, 32, 600)},   // row 2, second
      {1, f.t(0, 32, 700), f.t(0, 32, 800)},   // row 1, empty
      {1, f.t(9, 32, 900), f.t(9, 32, 1100)},  // row 1, non-empty
  };
  const AttnPlan plan = plan_attention(q, segs, shape, 132);
  EXPECT_EQ(plan.query_first, (std::vector<std::int64_t>{0, 1, 3, 5}));
  ASSERT_EQ(plan.segs.size(), 5u);
  EXPECT_EQ(plan.segs[0].k, segs[1].k.data);
  EXPECT_EQ(plan.segs[1].k, segs[3].k.data);
  EXPECT_EQ(plan.segs[2].v, segs[4].v.data);
  EXPECT_EQ(plan.segs[3].k, segs[0].k.data);
  EXPECT_EQ(plan.segs[4].k, segs[2].k.data);
  EXPECT_EQ(plan.segs[4].n_tokens, 1);
  EXPECT_EQ(plan.max_tokens, 9);
  EXPECT_GE(plan.n_splits * plan.split_tokens, plan.max_tokens);

  const auto blob = plan.pack();
  ASSERT_EQ(blob.size(), 5 * sizeof(AttnSegDesc) + 4 * sizeof(std::int64_t));
  std::int64_t first[4];
  std::memcpy(first, blob.data() + plan.query_first_offset(), sizeof(first));
  EXPECT_EQ(first[3], 5);
  EXPECT_EQ(plan.query_first_offset() % alignof(std::int64_t), 0u);
}

TEST(AttentionPlan, SplitsLongDecodeRowsAndLeavesPrefillWhole) {
  Fake f;
  const AttnShape shape{32, 32, 128, 0.1f};
  // Decode, batch 1, 4096 tokens: 32 (row, head) blocks cannot fill 132 SMs → split the tokens.
  {
    const Tensor q = f.t(1, 4096);
    std::vector<AttnSegment> segs = {{0, f.t(4000, 4096), f.t(4000, 4096)},
                                     {0, f.t(96, 4096), f.t(96, 4096)}};
    const AttnPlan plan = plan_attention(q, segs, shape, 132);
    EXPECT_GT(plan.n_splits, 1);
    EXPECT_LE(plan.n_splits, kAttnMaxSplits);
    EXPECT_GE(plan.n_splits * plan.split_tokens, 4096);
    EXPECT_GE(plan.split_tokens, kAttnMinSplitTokens);
  }
  // Short rows are never split below kAttnMinSplitTokens tokens per split.
  {
    const Tensor q = f.t(1, 4096);
    std::vector<AttnSegment> segs = {{0, f.t(100, 4096), f.t(100, 4096)}};
    EXPECT_EQ(plan_attention(q, segs, shape, 132).n_splits, 1);
  }
  // Prefill-sized: enough (row, head) blocks already.
  {
    const Tensor q = f.t(512, 4096);
    std::vector<AttnSegment> segs;
    for (std::int64_t r = 0; r < 512; ++r) segs.push_back({r, f.t(r + 1, 4096), f.t(r + 1, 4096)});
    const AttnPlan plan = plan_attention(q, segs, shape, 132);
    EXPECT_EQ(plan.n_splits, 1);
    EXPECT_EQ(plan.split_tokens, 512);
  }
}

void expect_error(const std::function<void()>& f, const std::string& needle, ErrorKind kind) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

// The arguments themselves are checked before the backend sees them (op_checks.h, tested in
// tests/kernels/op_checks_test.cpp); the plan refuses only what the kernel cannot do.
TEST(AttentionPlan, RefusesShapesBeyondTheKernel) {
  Fake f;
  const Tensor wide = f.t(1, 512);
  expect_error(
      [&] {
        plan_attention(wide, {}, {1, 1, 512, 1.0f}, 132);
      },
      "head_dim 512", ErrorKind::unimplemented);
  const Tensor many = f.t(1, 65536 * 2);
  expect_error(
      [&] {
        plan_attention(many, {}, {65536, 65536, 2, 1.0f}, 132);
      },
      "n_heads 65536", ErrorKind::unimplemented);
}

}  // namespace
}  // namespace kvpr::kernels::cuda
