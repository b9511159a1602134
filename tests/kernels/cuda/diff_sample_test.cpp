// Differential test of the sampling op, CPU reference (kernels::sample_row) vs the CUDA kernel:
// the same rows (rounded to the compute dtype, so both sides see the same numbers) and the same
// draws give the same tokens, log-probabilities and top-n, for greedy, temperature, top_k, top_p,
// penalties and their mixes, on a real vocabulary width and on rows of a few tokens with ties.
// Without a usable CUDA device every case skips and says why.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kvpr/kernels/row_sampling.h"

namespace kvpr::kernels {
namespace {

using cuda_test::Pair;
using cuda_test::random_values;
using cuda_test::round_to;

// One row's numbers of each kind, the draws from a seeded generator.
std::vector<RowSampling> kinds(std::int64_t vocab, std::int64_t rows, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<RowSampling> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    RowSampling p;
    switch (r % 6) {
      case 0:  // greedy with the top 5 reported
        p.logprobs = 5;
        break;
      case 1:  // a top_k past the vocabulary keeps every token, as 0 does
        p.temperature = 0.7f;
        p.top_k = vocab + 3;
        break;
      case 2:
        p.temperature = 1.3f;
        p.top_k = std::min<std::int64_t>(40, vocab - 1);
        p.logprobs = 3;
        break;
      case 3:
        p.temperature = 1.0f;
        p.top_p = 0.9;
        break;
      case 4:
        p.temperature = 0.8f;
        p.top_k = std::min<std::int64_t>(200, vocab - 1);
        p.top_p = 0.5;
        p.penalties = {{0, 0.5f}, {static_cast<std::int32_t>(vocab - 1), 1.25f}};
        break;
      default:  // penalties on a greedy row
        p.penalties = {{1, 2.0f}, {2, 0.25f}};
        p.logprobs = kMaxSampleLogprobs;
        break;
    }
    p.u = unit(rng);
    out.push_back(p);
  }
  return out;
}

class CudaSample : public ::testing::TestWithParam<DType> {};

TEST_P(CudaSample, ChoosesAsTheCpuReference) {
  KVPR_SKIP_WITHOUT_CUDA();
  Pair pair(GetParam());
  // A real vocabulary width, a power of two (the id bisections' edge: the last id is 2^m - 1),
  // and narrow ones on a coarse grid (ties everywhere, few id bits), the narrowest with tokens
  // at -inf (masked out: weight 0, log-probability -inf).
  for (const std::int64_t vocab : {50272, 4096, 37, 16}) {
    SCOPED_TRACE(vocab);
    const std::int64_t rows = 12;
    auto values = random_values(static_cast<std::size_t>(rows * vocab), 41, 3.0f);
    if (vocab < 100) {
      for (float& v : values) v = std::round(v * 2) / 2;
    }
    if (vocab == 16) {
      for (std::size_t i = 3; i < values.size(); i += 5) {
        values[i] = -std::numeric_limits<float>::infinity();
      }
    }
    round_to(GetParam(), values);
    const auto numbers = kinds(vocab, rows, 42);
    const auto want = pair.cpu.backend->sample(pair.cpu.put(values, rows, vocab), numbers);
    const auto got = pair.cuda.backend->sample(pair.cuda.put(values, rows, vocab), numbers);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t r = 0; r < got.size(); ++r) {
      SCOPED_TRACE(r);
      const auto near = [](float a, float b) {  // -inf (a masked token) only equals itself
        return std::isfinite(b) ? std::abs(a - b) <= 1e-4f : a == b;
      };
      EXPECT_EQ(got[r].token, want[r].token);
      EXPECT_PRED2(near, got[r].logprob, want[r].logprob);
      ASSERT_EQ(got[r].top.size(), want[r].top.size());
      for (std::size_t i = 0; i < got[r].top.size(); ++i) {
        EXPECT_EQ(got[r].top[i].first, want[r].top[i].first) << "top " << i;
        EXPECT_PRED2(near, got[r].top[i].second, want[r].top[i].second) << "top " << i;
      }
    }
    pair.cpu.buffers.clear();
    pair.cuda.buffers.clear();
  }
}

// Draws across [0, 1) on one tempered row land on the reference's tokens: the walk in id order
// is the same walk on both backends.
TEST_P(CudaSample, EveryDrawWalksTheSameWay) {
  KVPR_SKIP_WITHOUT_CUDA();
  Pair pair(GetParam());
  const std::int64_t vocab = 1000;
  auto values = random_values(static_cast<std::size_t>(vocab), 43, 2.0f);
  round_to(GetParam(), values);
  std::vector<float> rows;
  std::vector<RowSampling> numbers;
  for (int i = 0; i < 64; ++i) {
    rows.insert(rows.end(), values.begin(), values.end());
    RowSampling p;
    p.temperature = 1.0f;
    p.top_p = 0.95;
    p.u = (i + 0.37) / 64.0;
    numbers.push_back(p);
  }
  const auto want = pair.cpu.backend->sample(pair.cpu.put(rows, 64, vocab), numbers);
  const auto got = pair.cuda.backend->sample(pair.cuda.put(rows, 64, vocab), numbers);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].token, want[i].token) << i;
}

// A NaN fails the call naming the first bad token, as on the CPU.
TEST_P(CudaSample, ANanRowIsAnErrorNamingTheToken) {
  KVPR_SKIP_WITHOUT_CUDA();
  Pair pair(GetParam());
  std::vector<float> values(64, 0.5f);
  values[17] = std::numeric_limits<float>::quiet_NaN();
  values[40] = std::numeric_limits<float>::quiet_NaN();
  RowSampling p;
  p.temperature = 1.0f;
  try {
    (void)pair.cuda.backend->sample(pair.cuda.put(values, 1, 64), std::vector<RowSampling>{p});
    ADD_FAILURE() << "a NaN row was sampled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 17 is NaN"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaSample, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         cuda_test::dtype_name);

}  // namespace
}  // namespace kvpr::kernels
