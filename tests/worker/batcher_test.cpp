// Continuous batching is invisible in the output: requests of different lengths arriving at
// different steps give, under every policy and split, the tokens (up to the first near-tie) and
// logits (within the golden tolerance) they give alone; seeded sampling is the same alone and in a
// batch; preemption in a tiny store, cancellation, stop ids, deadlines and oversized requests
// behave as batcher.h says.
#include "kvpr/worker/batcher.h"

#include <gtest/gtest.h>

#include <random>

#include "policy_cases.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

const std::string kData = testing::test_data_dir() + "/golden/models/";
constexpr float kLogitTolerance = 1e-4f;  // CPU fp32, as the golden suite

struct JobSpec {
  std::vector<std::vector<std::int32_t>> prompts;
  std::int64_t max_new = 8;
  SamplingParams sampling;
  int arrive = 0;  // submitted before this many batcher steps have run
  // Logits rows to the host (the host sampling path); false: tokens chosen by Backend::sample.
  bool keep_logits = true;
};

JobSpec spec(std::vector<std::vector<std::int32_t>> prompts, std::int64_t max_new) {
  JobSpec s;
  s.prompts = std::move(prompts);
  s.max_new = max_new;
  return s;
}

struct Ran {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::vector<float>> logits;
  std::vector<Finish> finish;
  std::string error;
};

struct Config {
  std::string model;
  planner::Policy policy;
  std::optional<std::int64_t> split;
  std::string name;
};

std::ostream& operator<<(std::ostream& os, const Config& c) {
  return os << c.name;
}

// Runs the jobs through one Batcher over a fresh stack; the jobs' policy and split are the
// config's. `cancel_at`: job index → step after which it is cancelled.
std::vector<Ran> run(
    const Config& config, const std::vector<JobSpec>& specs, BatcherOptions options = {},
    std::uint64_t capacity = 1ull << 28, BatcherCounters* counters = nullptr,
    const std::function<void(Batcher&, int, std::vector<std::shared_ptr<BatchJob>>&,
                             kvstore::LocalKvStore&)>& between = {},
    const kernels::BackendOptions& backend = {}) {
  testing::Stack stack(kData + config.model, config.policy, config.split, capacity, backend);
  Batcher batcher(*stack.model, *stack.backend, *stack.store, stack.planner, options);
  std::vector<Ran> out(specs.size());
  std::vector<std::shared_ptr<BatchJob>> jobs;
  for (std::size_t j = 0; j < specs.size(); ++j) {
    auto job = std::make_shared<BatchJob>();
    job->id = j + 1;
    job->request.prompts = specs[j].prompts;
    job->request.max_new_tokens = specs[j].max_new;
    job->request.keep_logits = specs[j].keep_logits;
    job->sampling = specs[j].sampling;
    job->policy = config.policy;
    job->split = config.split;
    Ran& r = out[j];
    r.tokens.resize(specs[j].prompts.size());
    r.logits.resize(specs[j].prompts.size());
    r.finish.resize(specs[j].prompts.size(), Finish::cancelled);
    job->on_step = [&r, vocab = stack.model->config().vocab](const BatchJob&, const JobStep& s) {
      for (std::size_t i = 0; i < s.tokens.size(); ++i) {
        const auto index = static_cast<std::size_t>(s.tokens[i].index);
        r.tokens[index].push_back(s.tokens[i].token);
        if (s.logits.empty()) continue;
        const float* row = s.logits.data() + i * static_cast<std::size_t>(vocab);
        r.logits[index].insert(r.logits[index].end(), row, row + vocab);
      }
      for (const auto& [index, why] : s.finished) r.finish[static_cast<std::size_t>(index)] = why;
    };
    job->on_error = [&r](const BatchJob&, const Error& e) { r.error = e.what(); };
    jobs.push_back(std::move(job));
  }
  std::vector<bool> submitted(specs.size(), false);
  for (int step = 0; step < 10000; ++step) {
    for (std::size_t j = 0; j < specs.size(); ++j) {
      if (!submitted[j] && specs[j].arrive <= step) {
        batcher.submit(jobs[j]);
        submitted[j] = true;
      }
    }
    if (between) between(batcher, step, jobs, *stack.store);
    EXPECT_LE(static_cast<std::int64_t>(batcher.running()), options.max_batch);
    if (!batcher.step() &&
        std::all_of(submitted.begin(), submitted.end(), [](bool b) { return b; }) &&
        !batcher.busy()) {
      break;
    }
  }
  EXPECT_FALSE(batcher.busy());
  EXPECT_EQ(stack.store->stats().used_bytes, 0u) << "every sequence's blocks are freed";
  if (counters != nullptr) *counters = batcher.counters();
  return out;
}

std::vector<std::int32_t> prompt(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> p{2};
  while (std::ssize(p) < n) p.push_back(static_cast<std::int32_t>(3 + rng() % (vocab - 3)));
  return p;
}

// The second-best margin of a logits row (for near-ties).
float margin(const float* row, std::int64_t vocab) {
  float a = -1e30f, b = -1e30f;
  for (std::int64_t i = 0; i < vocab; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return a - b;
}

// Batched equals alone: logits within the tolerance and tokens equal while the alone run's
// top-1/top-2 margin is clear; a near-tie ends the comparison of that sequence.
void expect_same(const Ran& batched, const Ran& alone, std::int64_t vocab, const std::string& what,
                 float tolerance = kLogitTolerance) {
  ASSERT_TRUE(batched.error.empty()) << what << ": " << batched.error;
  ASSERT_TRUE(alone.error.empty()) << what << ": " << alone.error;
  for (std::size_t i = 0; i < alone.tokens.size(); ++i) {
    EXPECT_EQ(batched.finish[i], alone.finish[i]) << what << " sequence " << i;
    for (std::size_t t = 0; t < alone.tokens[i].size(); ++t) {
      ASSERT_LT(t, batched.tokens[i].size()) << what << " sequence " << i;
      const float* a = alone.logits[i].data() + t * static_cast<std::size_t>(vocab);
      const float* b = batched.logits[i].data() + t * static_cast<std::size_t>(vocab);
      EXPECT_LE(testing::max_abs_diff(a, b, static_cast<std::size_t>(vocab)), tolerance)
          << what << " sequence " << i << " token " << t;
      if (margin(a, vocab) < 2 * tolerance) break;  // a near-tie: either token is right
      ASSERT_EQ(batched.tokens[i][t], alone.tokens[i][t]) << what << " sequence " << i;
    }
    if (alone.finish[i] != Finish::stop) {
      EXPECT_EQ(batched.tokens[i].size(), alone.tokens[i].size()) << what << " sequence " << i;
    }
  }
}

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

const Config kOpt{"opt-2l-h64", planner::Policy::kvpr, 3, "opt"};

std::int64_t opt_vocab() {
  static const std::int64_t v =
      testing::Stack(kData + kOpt.model, kOpt.policy, kOpt.split).model->config().vocab;
  return v;
}

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

// Without logits rows to return, each step's tokens are chosen where the logits are
// (Backend::sample): the same tokens as the host path, with temperature, top_k, top_p,
// penalties, logprobs and a seed, alone, batched and through preemptions; and no decode step
// brings a logits row back (device→host bytes below one row).
TEST(Batcher, SamplingWhereTheLogitsAreGivesTheHostPathsTokens) {
  const auto vocab = opt_vocab();
  std::vector<JobSpec> host;
  for (int j = 0; j < 3; ++j) {
    JobSpec s = spec({prompt(8 + 5 * j, vocab, 60 + static_cast<std::uint64_t>(j)),
                      prompt(6, vocab, 70 + static_cast<std::uint64_t>(j))},
                     20);
    s.sampling.temperature = 0.9 + 0.3 * j;
    s.sampling.top_k = j == 1 ? 30 : 0;
    s.sampling.top_p = j == 2 ? 0.8 : 1.0;
    s.sampling.presence_penalty = 0.4;
    s.sampling.frequency_penalty = 0.2 * j;
    s.sampling.seed = 900 + static_cast<std::uint64_t>(j);
    s.sampling.ignore_eos = true;
    s.arrive = 2 * j;
    host.push_back(s);
  }
  std::vector<JobSpec> device = host;
  for (auto& s : device) s.keep_logits = false;

  testing::Stack probe(kData + kOpt.model, kOpt.policy, kOpt.split);
  const auto& shape = probe.store->shape();
  const std::uint64_t tiny = 9 * shape.block_bytes() * static_cast<std::uint64_t>(shape.n_layers);
  BatcherOptions options;
  options.admit = AdmitReserve::prompt;
  // Device→host bytes of a step beyond its write-back (each sequence's new activation and K,V
  // of every layer): the logits rows, when they come to the host.
  const auto token_bytes =
      static_cast<std::int64_t>(shape.n_layers * (shape.h + 2 * shape.h_kv) *
                                static_cast<std::int64_t>(size_of(shape.dtype)));
  const auto watch = [token_bytes](std::int64_t& most) {
    return [&most, token_bytes](Batcher& b, int step, auto&, auto&) {
      if (step != 0) return;
      b.on_decode_step = [&most, token_bytes](const StepStats& st) {
        const auto rows = static_cast<std::int64_t>(st.plan.l.size());
        most = std::max(most, static_cast<std::int64_t>(st.d2h_bytes) - rows * token_bytes);
      };
    };
  };
  BatcherCounters counters;
  std::int64_t beyond_device = -1, beyond_host = -1;
  const auto sampled = run(kOpt, device, options, tiny, &counters, watch(beyond_device));
  (void)run(kOpt, host, options, tiny, nullptr, watch(beyond_host));
  EXPECT_GT(counters.preemptions, 0u);
  EXPECT_LE(beyond_device, 0) << "no logits row left the device";
  EXPECT_GE(beyond_host, vocab * static_cast<std::int64_t>(sizeof(float)))
      << "the host path's rows are counted (the measure can see a row)";
  for (std::size_t j = 0; j < host.size(); ++j) {
    const auto alone = run(kOpt, {host[j]});
    EXPECT_EQ(sampled[j].tokens, alone[0].tokens) << "request " << j;
    EXPECT_TRUE(sampled[j].error.empty()) << sampled[j].error;
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

// The batcher on every registered backend (the CUDA cases are labelled gpu and skip without a
// device): greedy requests of different lengths arriving at different steps get, batched, what
// they get alone (logits within the backend's golden tolerance, tokens up to the first near-tie);
// and in fp32 a batch whose tokens are chosen where the logits are (Backend::sample) gives
// seeded sampled requests the tokens the host path gives them alone, through preemptions.
class BatcherOnBackends : public ::testing::TestWithParam<testing::Column> {
 protected:
  void SetUp() override { KVPR_SKIP_UNLESS_AVAILABLE(backend()); }
  const testing::BackendCase& backend() const { return testing::kBackends[GetParam().index]; }
  float tolerance() const {  // the golden suite's logits tolerance of this compute dtype
    switch (backend().compute) {
      case DType::f32:
        return kLogitTolerance;
      case DType::f16:
        return 5e-2f;
      case DType::bf16:
        return 0.25f;
    }
    return 0;
  }
};

TEST_P(BatcherOnBackends, GreedyBatchingIsInvisible) {
  const auto vocab = opt_vocab();
  std::vector<JobSpec> specs;
  const std::vector<std::int64_t> lengths{5, 12, 3, 20};
  for (std::size_t j = 0; j < lengths.size(); ++j) {
    JobSpec s = spec({prompt(lengths[j], vocab, 80 + j)}, 6 + static_cast<std::int64_t>(j));
    s.sampling.ignore_eos = true;
    s.arrive = static_cast<int>(j);
    specs.push_back(s);
  }
  const auto options = backend().options();
  const auto batched = run(kOpt, specs, {}, 1ull << 28, nullptr, {}, options);
  for (std::size_t j = 0; j < specs.size(); ++j) {
    const auto alone = run(kOpt, {specs[j]}, {}, 1ull << 28, nullptr, {}, options);
    expect_same(batched[j], alone[0], vocab, "request " + std::to_string(j), tolerance());
  }
}

TEST_P(BatcherOnBackends, SampledTokensAreTheSameWhereverTheyAreChosen) {
  if (backend().compute != DType::f32) {
    GTEST_SKIP() << "in " << safetensors_name(backend().compute)
                 << " a batch's logits differ from a lone run's by more than a draw can bear";
  }
  const auto vocab = opt_vocab();
  std::vector<JobSpec> host;
  for (int j = 0; j < 3; ++j) {
    JobSpec s = spec({prompt(7 + 4 * j, vocab, 90 + static_cast<std::uint64_t>(j))}, 16);
    s.sampling.temperature = 1.1;
    s.sampling.top_k = j == 1 ? 20 : 0;
    s.sampling.top_p = j == 2 ? 0.9 : 1.0;
    s.sampling.frequency_penalty = 0.3;
    s.sampling.logprobs = 2;
    s.sampling.seed = 70 + static_cast<std::uint64_t>(j);
    s.sampling.ignore_eos = true;
    s.arrive = j;
    host.push_back(s);
  }
  std::vector<JobSpec> device = host;
  for (auto& s : device) s.keep_logits = false;
  testing::Stack probe(kData + kOpt.model, kOpt.policy, kOpt.split);
  const auto& shape = probe.store->shape();
  BatcherOptions options;
  options.admit = AdmitReserve::prompt;
  const auto sampled = run(kOpt, device, options,
                           5 * shape.block_bytes() * static_cast<std::uint64_t>(shape.n_layers),
                           nullptr, {}, backend().options());
  for (std::size_t j = 0; j < host.size(); ++j) {
    const auto alone = run(kOpt, {host[j]}, {}, 1ull << 28, nullptr, {}, backend().options());
    EXPECT_EQ(sampled[j].tokens, alone[0].tokens) << "request " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BatcherOnBackends,
                         ::testing::ValuesIn(testing::registered_columns()), testing::column_name);

}  // namespace
}  // namespace kvpr::worker
