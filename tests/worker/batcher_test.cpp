// Continuous batching is invisible in the output: requests of different lengths arriving at
// different steps give, under every policy and split, the tokens (up to the first near-tie) and
// logits (within the golden tolerance) they give alone; seeded sampling is the same alone and in a
// batch; preemption in a tiny store, cancellation, stop ids, deadlines and oversized requests
// behave as batcher.h says. (Sampling where the logits are, and the batcher on every backend:
// batcher_sampling_test.cpp.)
#include "batcher_support.h"

namespace kvpr::worker {
namespace {

using namespace batcher_testing;  // NOLINT(google-build-using-namespace): the suite's vocabulary

class BatchingInvisible : public ::testing::TestWithParam<Config> {};

TEST_P(BatchingInvisible, EachRequestGetsWhatItGetsAlone) {
  const Config& config = GetParam();
  const auto vocab =
      testing::Stack(kData + config.model, config.policy, config.split).model->config().vocab;
  std::vector<JobSpec> specs;
  const std::vector<std::int64_t> lengths{5, 12, 3, 20, 8};
  const std::vector<std::int64_t> max_new{7, 3, 10, 5, 9};
  const std::vector<int> arrive{0, 0, 2, 3, 6};
  for (std::size_t j = 0; j < lengths.size(); ++j) {
    JobSpec s;
    s.prompts = {prompt(lengths[j], vocab, 100 + j)};
    if (j == 3) s.prompts.push_back(prompt(4, vocab, 999));  // a request of two sequences
    s.max_new = max_new[j];
    s.arrive = arrive[j];
    s.sampling.ignore_eos = true;
    specs.push_back(s);
  }
  BatcherOptions options;
  options.max_batch = 3;  // queueing, leaving and joining all happen
  options.max_prefill_tokens_per_step = 16;
  const auto batched = run(config, specs, options);
  for (std::size_t j = 0; j < specs.size(); ++j) {
    JobSpec alone_spec = specs[j];
    alone_spec.arrive = 0;
    const auto alone = run(config, {alone_spec});
    expect_same(batched[j], alone[0], vocab, config.name + " request " + std::to_string(j));
  }
}

INSTANTIATE_TEST_SUITE_P(
    PoliciesAndModels, BatchingInvisible,
    ::testing::Values(
        Config{"opt-2l-h64", planner::Policy::resident, std::nullopt, "opt_resident"},
        Config{"opt-2l-h64", planner::Policy::transfer, std::nullopt, "opt_transfer"},
        Config{"opt-2l-h64", planner::Policy::recompute, std::nullopt, "opt_recompute"},
        Config{"opt-2l-h64", planner::Policy::kvpr, 3, "opt_kvpr_split3"},
        Config{"opt-2l-h64", planner::Policy::kvpr, std::nullopt, "opt_kvpr_auto"},
        Config{"llama-2l-h64-mha", planner::Policy::kvpr, 5, "llama_kvpr_split5"},
        Config{"llama-2l-h64-mha", planner::Policy::transfer, std::nullopt, "llama_transfer"}),
    [](const auto& p) { return p.param.name; });

TEST(Batcher, TemperatureZeroAndTopKOneAreGreedy) {
  const auto vocab = opt_vocab();
  JobSpec greedy = spec({prompt(9, vocab, 7)}, 10);
  greedy.sampling.ignore_eos = true;
  JobSpec t0 = greedy;
  t0.sampling.top_k = 40;
  t0.sampling.top_p = 0.5;
  JobSpec k1 = greedy;
  k1.sampling.temperature = 1.3;
  k1.sampling.top_k = 1;
  k1.sampling.seed = 5;
  const auto out = run(kOpt, {greedy, t0, k1});
  EXPECT_EQ(out[1].tokens, out[0].tokens);
  EXPECT_EQ(out[2].tokens, out[0].tokens);
}

TEST(Batcher, SeededSamplingIsTheSameAloneAndInABatch) {
  const auto vocab = opt_vocab();
  JobSpec sampled = spec({prompt(6, vocab, 11), prompt(6, vocab, 11)}, 12);
  sampled.sampling.temperature = 1.5;
  sampled.sampling.top_p = 0.95;
  sampled.sampling.seed = 1234;
  sampled.sampling.ignore_eos = true;
  JobSpec other = spec({prompt(14, vocab, 12)}, 12);
  other.sampling.ignore_eos = true;
  const auto alone = run(kOpt, {sampled});
  const auto batched = run(kOpt, {other, sampled});
  EXPECT_EQ(batched[1].tokens, alone[0].tokens);
  // Sequence i samples with seed + i: the two copies of one prompt differ.
  EXPECT_NE(alone[0].tokens[0], alone[0].tokens[1]);
}

TEST(Batcher, ATinyStorePreemptsAndEveryRequestStillGetsItsOutput) {
  const auto vocab = opt_vocab();
  std::vector<JobSpec> specs;
  for (int j = 0; j < 4; ++j) {
    JobSpec s = spec({prompt(10 + 3 * j, vocab, 40 + static_cast<std::uint64_t>(j))}, 24);
    s.sampling.ignore_eos = true;
    specs.push_back(s);
  }
  // Room for about three sequences of 34 tokens at most: admitted on their prompts, they
  // outgrow the store while decoding.
  testing::Stack probe(kData + kOpt.model, kOpt.policy, kOpt.split);
  const auto& shape = probe.store->shape();
  const std::uint64_t capacity =
      7 * shape.block_bytes() * static_cast<std::uint64_t>(shape.n_layers);
  BatcherOptions options;
  options.admit = AdmitReserve::prompt;
  BatcherCounters counters;
  const auto batched = run(kOpt, specs, options, capacity, &counters);
  EXPECT_GT(counters.preemptions, 0u);
  for (std::size_t j = 0; j < specs.size(); ++j) {
    const auto alone = run(kOpt, {specs[j]});
    expect_same(batched[j], alone[0], vocab, "request " + std::to_string(j));
  }
}

TEST(Batcher, ALongPromptIsPrefilledInChunksBetweenTheBatchsSteps) {
  const auto vocab = opt_vocab();
  JobSpec running = spec({prompt(6, vocab, 61)}, 30);
  running.sampling.ignore_eos = true;
  JobSpec long_prompt = spec({prompt(100, vocab, 62)}, 8);
  long_prompt.sampling.ignore_eos = true;
  long_prompt.arrive = 2;
  BatcherOptions options;
  options.max_prefill_tokens_per_step = 7;  // 15 chunks, one per decode step of the other
  const auto batched = run(kOpt, {running, long_prompt}, options, 1ull << 28, nullptr,
                           [&](Batcher& batcher, int step, auto&, kvstore::LocalKvStore&) {
                             if (step > 3 && step < 15) {
                               EXPECT_EQ(batcher.running(), 2u) << "step " << step;
                             }
                           });
  for (std::size_t j = 0; j < 2; ++j) {
    JobSpec alone = j == 0 ? running : long_prompt;
    alone.arrive = 0;
    expect_same(batched[j], run(kOpt, {alone})[0], vocab, "request " + std::to_string(j));
  }
  // The running request kept decoding while the long prompt went in: it finished first.
  EXPECT_EQ(batched[0].tokens[0].size(), 30u);
}

TEST(Batcher, CancelledAndStoppedSequencesLeaveAndFreeTheirBlocks) {
  const auto vocab = opt_vocab();
  JobSpec a = spec({prompt(8, vocab, 1), prompt(8, vocab, 2)}, 40);
  a.sampling.ignore_eos = true;
  JobSpec b = spec({prompt(8, vocab, 3)}, 40);
  b.sampling.ignore_eos = true;
  std::uint64_t used_before = 0, used_after = 0;
  const auto out = run(kOpt, {a, b}, {}, 1ull << 28, nullptr,
                       [&](Batcher& batcher, int step, auto& jobs, kvstore::LocalKvStore& store) {
                         if (step == 3) {
                           used_before = store.stats().used_bytes;
                           jobs[0]->request_stop(1);
                           jobs[1]->cancelled = true;
                         }
                         if (step == 4) {
                           used_after = store.stats().used_bytes;
                           EXPECT_EQ(batcher.running(), 1u);
                         }
                       });
  EXPECT_EQ(out[0].finish[0], Finish::length);
  EXPECT_EQ(out[0].tokens[0].size(), 40u);
  EXPECT_EQ(out[0].finish[1], Finish::cancelled);
  EXPECT_LT(out[0].tokens[1].size(), 40u);
  EXPECT_EQ(out[1].finish[0], Finish::cancelled);
  EXPECT_LT(used_after, used_before / 2) << "two of three sequences' blocks went back";
}

TEST(Batcher, AStopIdEndsTheSequenceWithIt) {
  const auto vocab = opt_vocab();
  JobSpec s = spec({prompt(7, vocab, 21)}, 12);
  s.sampling.ignore_eos = true;
  const auto free_run = run(kOpt, {s});
  const std::int32_t stop = free_run[0].tokens[0][4];
  s.sampling.stop_token_ids = {stop};
  const auto stopped = run(kOpt, {s});
  const auto& t = stopped[0].tokens[0];
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.back(), stop);
  EXPECT_LE(t.size(), 5u);
  EXPECT_EQ(stopped[0].finish[0], Finish::stop);
}

TEST(Batcher, ARequestPastItsDeadlineFailsAndOneTooBigForTheStoreFailsAtOnce) {
  const auto vocab = opt_vocab();
  testing::Stack stack(kData + kOpt.model, kOpt.policy, kOpt.split, 1u << 20);
  Batcher batcher(*stack.model, *stack.backend, *stack.store, stack.planner, {});
  std::string late, big;
  auto job = std::make_shared<BatchJob>();
  job->request.prompts = {prompt(5, vocab, 1)};
  job->request.max_new_tokens = 50;
  job->deadline = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  job->on_error = [&](const BatchJob&, const Error& e) { late = e.what(); };
  batcher.submit(job);
  batcher.step();
  EXPECT_NE(late.find("deadline"), std::string::npos) << late;
  auto huge = std::make_shared<BatchJob>();
  huge->request.prompts = {prompt(5, vocab, 2)};
  huge->request.max_new_tokens = 100000;
  huge->on_error = [&](const BatchJob&, const Error& e) { big = e.what(); };
  batcher.submit(huge);
  EXPECT_NE(big.find("the store holds"), std::string::npos) << big;
  EXPECT_FALSE(batcher.busy());
}

}  // namespace
}  // namespace kvpr::worker
