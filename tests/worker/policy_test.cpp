// Every policy and every split gives the logits of keeping all K,V on the device, on every
// registered backend (backends.h): batches of mixed context lengths, several decode steps, on the
// golden checkpoints and on generated configurations the golden set lacks (grouped-query
// attention, post-LN OPT with project_in/out, tied LLaMA head, fp16 and bf16 storage, other
// widths); and the step statistics and a full store, which do not depend on the numerics.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <functional>
#include <ostream>
#include <random>
#include <utility>

#include "backends.h"
#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"
#include "policy_cases.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

using testing::BackendCase;
using testing::max_abs_diff;
using testing::Stack;
using namespace testing;  // NOLINT(google-build-using-namespace): the suite's shared cases

class PolicyEquivalence : public ::testing::TestWithParam<Column> {
 protected:
  void SetUp() override { KVPR_SKIP_UNLESS_AVAILABLE(backend()); }
  std::size_t column() const { return GetParam().index; }
  const BackendCase& backend() const { return kBackends[column()]; }
  Stack stack(const std::string& dir, planner::Policy policy, std::optional<std::int64_t> split,
              std::uint64_t capacity = std::uint64_t{1} << 28) const {
    return {dir, policy, split, capacity, backend().options()};
  }
};

TEST_P(PolicyEquivalence, EveryPolicyAndSplitMatchesResident) {
  constexpr int kSteps = 3;
  const auto root = std::filesystem::temp_directory_path() /
                    ("kvpr-policy-test-" + std::to_string(::getpid()) + "-" + backend().label());
  std::filesystem::create_directories(root);
  for (const auto& m : model_cases()) {
    const std::optional<float> tol = m.tol[column()];
    if (!tol) continue;
    SCOPED_TRACE(m.name);
    const std::string dir = m.make(root);
    std::vector<std::vector<std::int32_t>> feed;
    Stack base = stack(dir, planner::Policy::resident, std::nullopt);
    const auto ps = prompts(base.checkpoint.config().vocab);
    const auto reference = run(base, ps, feed, kSteps);
    const std::int64_t s = 33;  // the longest prompt
    struct Variant {
      planner::Policy policy;
      std::optional<std::int64_t> split;
    };
    std::vector<Variant> variants = {{planner::Policy::transfer, std::nullopt},
                                     {planner::Policy::recompute, std::nullopt},
                                     {planner::Policy::kvpr, std::nullopt}};
    for (std::int64_t l : {std::int64_t{0}, std::int64_t{1}, s / 2, s - 1, s, s + 40}) {
      variants.push_back({planner::Policy::kvpr, l});
    }
    float worst = 0;
    for (const auto& v : variants) {
      SCOPED_TRACE(std::string(planner::to_string(v.policy)) + " split " +
                   (v.split ? std::to_string(*v.split) : "auto"));
      Stack under_test = stack(dir, v.policy, v.split);
      const auto got = run(under_test, ps, feed, kSteps);
      worst = std::max(worst, expect_steps_within(got, reference, *tol));
      EXPECT_EQ(under_test.store->stats().used_bytes, 0u);
    }
    std::printf("[policy %s %s] worst |logits - resident| = %.3g (tolerance %.0e)\n",
                backend().label().c_str(), m.name.c_str(), worst, *tol);
  }
  std::filesystem::remove_all(root);
}

// The three-way split (issue 14): recompute [0, l), transfer [l, m), attend on the host [m, s),
// for splits across the block boundaries and the edges m = s (nothing on the host), m = l
// (nothing fetched) and m = 0 (everything on the host), on every model, in batches of mixed
// lengths (each split clamped per sequence).
TEST_P(PolicyEquivalence, ThreeWaySplitsMatchResident) {
  constexpr int kSteps = 2;
  const auto root = std::filesystem::temp_directory_path() /
                    ("kvpr-threeway-test-" + std::to_string(::getpid()) + "-" + backend().label());
  std::filesystem::create_directories(root);
  const std::int64_t s = 33;  // the longest prompt
  const std::vector<std::pair<std::int64_t, std::int64_t>> splits = {
      {0, 0}, {0, 17}, {0, s}, {1, 1}, {4, 20}, {s / 2, s / 2}, {s / 2, s - 1}, {s, s}, {0, 5}};
  for (const auto& mc : model_cases()) {
    const std::optional<float> tol = mc.tol[column()];
    if (!tol) continue;
    SCOPED_TRACE(mc.name);
    const std::string dir = mc.make(root);
    std::vector<std::vector<std::int32_t>> feed;
    Stack base = stack(dir, planner::Policy::resident, std::nullopt);
    const auto ps = prompts(base.checkpoint.config().vocab);
    const auto reference = run(base, ps, feed, kSteps);
    float worst = 0;
    for (const auto& [l, m] : splits) {
      SCOPED_TRACE("split " + std::to_string(l) + ":" + std::to_string(m));
      Stack under_test = stack(dir, planner::Policy::kvpr, l);
      EngineOptions options{planner::Policy::kvpr, l};
      options.host_split = m;
      options.host_threads = 2;
      under_test.engine = std::make_unique<Engine>(*under_test.model, *under_test.backend,
                                                   *under_test.store, under_test.planner, options);
      const auto got = run(under_test, ps, feed, kSteps);
      worst = std::max(worst, expect_steps_within(got, reference, *tol));
      const auto& plan = under_test.engine->last_step().plan;
      ASSERT_EQ(plan.m.size(), ps.size());
      for (std::size_t i = 0; i < ps.size(); ++i) {
        EXPECT_GE(plan.m[i], plan.l[i]);
        EXPECT_LE(plan.m[i], static_cast<std::int64_t>(ps[i].size()) + kSteps - 1);
      }
      EXPECT_EQ(under_test.store->stats().used_bytes, 0u);
    }
    std::printf("[threeway %s %s] worst |logits - resident| = %.3g (tolerance %.0e)\n",
                backend().label().c_str(), mc.name.c_str(), worst, *tol);
  }
  std::filesystem::remove_all(root);
}

TEST_P(PolicyEquivalence, StepStatsCountHostRows) {
  const std::string dir = testing::test_data_dir() + "/golden/models/llama-2l-h64-mha";
  Stack st = stack(dir, planner::Policy::kvpr, 2);
  EngineOptions options{planner::Policy::kvpr, 2};
  options.host_split = 5;
  st.engine = std::make_unique<Engine>(*st.model, *st.backend, *st.store, st.planner, options);
  std::vector<float> logits;
  const std::vector<std::int32_t> a = {1, 5, 9, 14, 20, 3, 7}, b = {1, 8};
  const SeqHandle seqs[] = {st.engine->prefill(a, logits), st.engine->prefill(b, logits)};
  const std::int32_t tokens[] = {4, 4};
  st.engine->decode(seqs, tokens);
  const auto& step = st.engine->last_step();
  // s = 7: l 2, m 5 → 2 recomputed, 3 fetched, 2 on the host; s = 2: l 2, m 2 → 2, 0, 0.
  EXPECT_EQ(step.plan.l, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(step.plan.m, (std::vector<std::int64_t>{5, 2}));
  EXPECT_EQ(step.recompute_tokens, 2 * 4);
  EXPECT_EQ(step.transfer_tokens, 2 * 3);
  EXPECT_EQ(step.host_tokens, 2 * 2);
  EXPECT_GT(step.times.host_attention, 0.0);
}

TEST_P(PolicyEquivalence, StepStatsCountRecomputedAndTransferredRows) {
  const std::string dir = testing::test_data_dir() + "/golden/models/llama-2l-h64-mha";
  Stack st_stack = stack(dir, planner::Policy::kvpr, 4);
  std::vector<float> logits;
  const std::vector<std::int32_t> a = {1, 5, 9, 14, 20, 3, 7}, b = {1, 8};
  const SeqHandle seqs[] = {st_stack.engine->prefill(a, logits),
                            st_stack.engine->prefill(b, logits)};
  const std::int32_t tokens[] = {4, 4};
  st_stack.engine->decode(seqs, tokens);
  const auto& st = st_stack.engine->last_step();
  // l = min(4, s): 4 + 2 rows recomputed, 3 + 0 fetched, in each of 2 layers.
  EXPECT_EQ(st.recompute_tokens, 12);
  EXPECT_EQ(st.transfer_tokens, 6);
  EXPECT_EQ(st.plan.l, (std::vector<std::int64_t>{4, 2}));
  EXPECT_GT(st.h2d_bytes, 0u);
  EXPECT_GT(st.d2h_bytes, 0u);
  EXPECT_GT(st.times.total, 0.0);
}

TEST_P(PolicyEquivalence, FullStoreFailsTheStepWithoutLosingData) {
  const std::string dir = testing::test_data_dir() + "/golden/models/opt-2l-h64";
  // Capacity for exactly one 16-token block per layer.
  Stack full = stack(dir, planner::Policy::kvpr, std::nullopt, 2 * 16 * (64 + 2 * 64) * 4);
  std::vector<float> logits;
  std::vector<std::int32_t> prompt(16, 5);
  prompt[0] = 2;
  const SeqHandle seq = full.engine->prefill(prompt, logits);
  const SeqHandle seqs[] = {seq};
  const std::int32_t tok[] = {7};
  try {
    full.engine->decode(seqs, tok);
    FAIL() << "decode past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
  }
  EXPECT_EQ(full.engine->length(seq), 16);  // nothing committed, nothing lost
  EXPECT_THROW(full.engine->prefill(prompt, logits), Error);
  EXPECT_EQ(full.store->stats().sequences, 1u);  // the failed prefill left nothing behind
}

INSTANTIATE_TEST_SUITE_P(Backends, PolicyEquivalence, ::testing::ValuesIn(registered_columns()),
                         column_name);

TEST(Tolerances, PolicyCoversEveryRegisteredBackend) {
  for (const std::string& name : kernels::backend_names()) {
    EXPECT_TRUE(std::any_of(kBackends.begin(), kBackends.end(),
                            [&](const auto& b) { return b.name == name; }))
        << "backend '" << name << "' has no column in the policy tolerance table";
  }
}

}  // namespace
}  // namespace kvpr::worker
