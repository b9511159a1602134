// Throughput mode against the latency path: the block schedule (G micro-batches per layer) with a
// share of each layer's weights streamed from host memory gives the latency schedule's tokens and
// logits under every policy, on every model of the equivalence suite and every registered backend;
// a model larger than the device-memory budget runs and matches an unlimited one; a budget below
// one layer's working set is refused with the sizes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "kvpr/common/error.h"
#include "policy_cases.h"

namespace kvpr::worker {
namespace {

using testing::BackendCase;
using testing::Column;
using testing::kBackends;
using testing::max_abs_diff;
using testing::Stack;
using testing::ThroughputKnobs;

class Throughput : public ::testing::TestWithParam<Column> {
 protected:
  void SetUp() override { KVPR_SKIP_UNLESS_AVAILABLE(backend()); }
  std::size_t column() const { return GetParam().index; }
  const BackendCase& backend() const { return kBackends[column()]; }
  std::filesystem::path root(const std::string& what) const {
    return std::filesystem::temp_directory_path() /
           ("kvpr-" + what + "-" + std::to_string(::getpid()) + "-" + backend().label());
  }
};

// Four prompts of mixed lengths: three micro-batches of 2, 1 and 1 sequences.
std::vector<std::vector<std::int32_t>> four_prompts(std::int64_t vocab) {
  auto ps = testing::prompts(vocab);
  std::vector<std::int32_t> head(ps[1].begin(), ps[1].begin() + 21);
  ps.push_back(std::move(head));
  return ps;
}

std::int32_t argmax_row(const std::vector<float>& logits, std::size_t row, std::int64_t vocab) {
  const auto* begin = logits.data() + row * static_cast<std::size_t>(vocab);
  return static_cast<std::int32_t>(std::max_element(begin, begin + vocab) - begin);
}

TEST_P(Throughput, BlockScheduleWithStreamedWeightsMatchesTheLatencySchedule) {
  constexpr int kSteps = 3;
  const auto dir_root = root("throughput-test");
  std::filesystem::create_directories(dir_root);
  struct Variant {
    planner::Policy policy;
    std::optional<std::int64_t> split;
    const char* name;
  };
  const std::vector<Variant> policies = {{planner::Policy::resident, std::nullopt, "resident"},
                                         {planner::Policy::transfer, std::nullopt, "transfer"},
                                         {planner::Policy::recompute, std::nullopt, "recompute"},
                                         {planner::Policy::kvpr, 16, "kvpr split 16"},
                                         {planner::Policy::kvpr, std::nullopt, "kvpr auto"}};
  for (const auto& mc : testing::model_cases()) {
    const std::optional<float> tol = mc.tol[column()];
    if (!tol) continue;
    SCOPED_TRACE(mc.name);
    const std::string dir = mc.make(dir_root);
    float worst = 0;
    for (const auto& p : policies) {
      SCOPED_TRACE(p.name);
      std::vector<std::vector<std::int32_t>> feed;
      Stack latency(dir, p.policy, p.split, std::uint64_t{1} << 28, backend().options());
      const auto vocab = latency.checkpoint.config().vocab;
      const auto ps = four_prompts(vocab);
      const auto reference = testing::run(latency, ps, feed, kSteps);
      for (const std::int64_t g : {1, 3}) {
        for (const double fraction : {0.0, 0.5, 1.0}) {
          SCOPED_TRACE("G " + std::to_string(g) + " weight fraction " + std::to_string(fraction));
          Stack block(dir, p.policy, p.split, std::uint64_t{1} << 28, backend().options(),
                      ThroughputKnobs{{fraction, 0}, g});
          if (fraction < 1) {
            EXPECT_LT(block.model->device_fraction(), 1.0);
            EXPECT_GT(block.model->slot_bytes(), 0u);
          }
          const auto got = testing::run(block, ps, feed, kSteps);
          worst = std::max(worst, testing::expect_steps_within(got, reference, *tol));
          for (int step = 0; step < kSteps; ++step) {
            const auto& a = got[static_cast<std::size_t>(step)];
            const auto& b = reference[static_cast<std::size_t>(step)];
            if (a.size() != b.size()) continue;  // reported above
            for (std::size_t i = 0; i < ps.size(); ++i) {
              EXPECT_EQ(argmax_row(a, i, vocab), argmax_row(b, i, vocab))
                  << "greedy token of sequence " << i << " at step " << step;
            }
          }
          EXPECT_EQ(block.store->stats().used_bytes, 0u);
        }
      }
    }
    std::printf("[throughput %s %s] worst |logits - latency schedule| = %.3g (tolerance %.0e)\n",
                backend().label().c_str(), mc.name.c_str(), worst, *tol);
  }
  std::filesystem::remove_all(dir_root);
}

TEST_P(Throughput, AModelLargerThanTheDeviceBudgetStreamsItsWeightsAndMatches) {
  const auto dir_root = root("budget-test");
  std::filesystem::create_directories(dir_root);
  ModelConfig config = modelgen::preset("opt-tiny");
  config.n_layers = 6;
  const std::string dir = testing::generate(dir_root, "opt-6l", config, 21);
  std::vector<std::vector<std::int32_t>> feed;
  Stack unlimited(dir, planner::Policy::kvpr, std::nullopt, std::uint64_t{1} << 28,
                  backend().options());
  const auto ps = four_prompts(config.vocab);
  const auto reference = testing::run(unlimited, ps, feed, 3);
  const std::uint64_t weights = unlimited.backend->memory_used();  // weights + a step's buffers
  const std::uint64_t matrices =  // on the device, in the compute dtype
      unlimited.model->layer_matrix_bytes() * size_of(unlimited.backend->compute_dtype()) /
      size_of(config.dtype);
  ASSERT_GT(matrices, weights / 2);

  // A budget well below the model: the largest share that fits beside the working set.
  kernels::BackendOptions options = backend().options();
  options.device_memory = weights - matrices / 2;
  const auto reserve = working_set_bytes(config, 4, 64, 2, unlimited.backend->compute_dtype());
  options.device_memory += reserve;
  Stack budgeted(dir, planner::Policy::kvpr, std::nullopt, std::uint64_t{1} << 28, options,
                 ThroughputKnobs{{std::nullopt, reserve}, 2});
  EXPECT_GT(budgeted.model->device_fraction(), 0.0);
  EXPECT_LT(budgeted.model->device_fraction(), 0.75);
  const auto got = testing::run(budgeted, ps, feed, 3);
  for (std::size_t step = 0; step < got.size(); ++step) {
    EXPECT_LE(max_abs_diff(got[step].data(), reference[step].data(), got[step].size()), 1e-5f)
        << "step " << step;
  }
  std::printf("[throughput budget] %llu-byte budget: %.2f of each layer's weights resident\n",
              static_cast<unsigned long long>(options.device_memory),
              budgeted.model->device_fraction());

  // Below the embeddings, two layer slots and the working set: refused, naming the sizes.
  options.device_memory = weights / 8;
  try {
    Stack tiny(dir, planner::Policy::kvpr, std::nullopt, std::uint64_t{1} << 28, options,
               ThroughputKnobs{{std::nullopt, reserve}, 1});
    ADD_FAILURE() << "a budget of " << options.device_memory << " bytes was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded);
    EXPECT_NE(std::string(e.what()).find("too small for one layer's working set"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(std::to_string(options.device_memory)), std::string::npos)
        << e.what();
  }
  // A fixed share that does not fit is refused too.
  try {
    Stack whole(dir, planner::Policy::kvpr, std::nullopt, std::uint64_t{1} << 28, options,
                ThroughputKnobs{{1.0, 0}, 1});
    ADD_FAILURE() << "all weights fit in " << options.device_memory << " bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device-memory"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir_root);
}

// The three-way split inside the block schedule: each micro-batch's query rows, host partials and
// merge use its own rows (recompute [0, 4), transfer [4, 20), the host from 20 on).
TEST_P(Throughput, HostAttentionPerMicroBatchMatchesTheLatencySchedule) {
  constexpr int kSteps = 2;
  const auto dir_root = root("throughput-host-test");
  std::filesystem::create_directories(dir_root);
  const auto with = [&](Stack& stack, std::int64_t g) {
    EngineOptions options{planner::Policy::kvpr, 4};
    options.host_split = 20;
    options.host_threads = 2;
    options.micro_batches = g;
    stack.engine = std::make_unique<Engine>(*stack.model, *stack.backend, *stack.store,
                                            stack.planner, options);
  };
  for (const auto& mc : testing::model_cases()) {
    const std::optional<float> tol = mc.tol[column()];
    if (!tol) continue;
    SCOPED_TRACE(mc.name);
    const std::string dir = mc.make(dir_root);
    std::vector<std::vector<std::int32_t>> feed;
    Stack latency(dir, planner::Policy::kvpr, 4, std::uint64_t{1} << 28, backend().options());
    with(latency, 1);
    const auto ps = four_prompts(latency.checkpoint.config().vocab);
    const auto reference = testing::run(latency, ps, feed, kSteps);
    Stack block(dir, planner::Policy::kvpr, 4, std::uint64_t{1} << 28, backend().options(),
                ThroughputKnobs{{0.5, 0}, 3});
    with(block, 3);
    const auto got = testing::run(block, ps, feed, kSteps);
    testing::expect_steps_within(got, reference, *tol);
    EXPECT_GT(block.engine->last_step().host_tokens, 0);
    EXPECT_EQ(block.engine->last_step().micro.size(), 3u);
  }
  std::filesystem::remove_all(dir_root);
}

INSTANTIATE_TEST_SUITE_P(Backends, Throughput, ::testing::ValuesIn(testing::registered_columns()),
                         testing::column_name);

}  // namespace
}  // namespace kvpr::worker
