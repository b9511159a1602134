// Shared by the batcher's tests (batcher_test.cpp, batcher_sampling_test.cpp): jobs run through
// one Batcher over a fresh stack, what each sequence got, and the comparison with a lone run.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kvpr/worker/batcher.h"
#include "policy_cases.h"
#include "stack.h"

namespace kvpr::worker::batcher_testing {

inline const std::string kData = testing::test_data_dir() + "/golden/models/";
inline constexpr float kLogitTolerance = 1e-4f;  // CPU fp32, as the golden suite

struct JobSpec {
  std::vector<std::vector<std::int32_t>> prompts;
  std::int64_t max_new = 8;
  SamplingParams sampling;
  int arrive = 0;  // submitted before this many batcher steps have run
  // Logits rows to the host (the host sampling path); false: tokens chosen by Backend::sample.
  bool keep_logits = true;
  bool score_prompt = false;
};

inline JobSpec spec(std::vector<std::vector<std::int32_t>> prompts, std::int64_t max_new) {
  JobSpec s;
  s.prompts = std::move(prompts);
  s.max_new = max_new;
  return s;
}

struct Ran {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::vector<float>> logits;
  std::vector<Finish> finish;
  std::vector<std::vector<TokenOut>> prompt_scores;  // per sequence, when score_prompt
  std::string error;
};

struct Config {
  std::string model;
  planner::Policy policy;
  std::optional<std::int64_t> split;
  std::string name;
};

inline std::ostream& operator<<(std::ostream& os, const Config& c) {
  return os << c.name;
}

// Runs the jobs through one Batcher over a fresh stack; the jobs' policy and split are the
// config's. `cancel_at`: job index → step after which it is cancelled.
inline std::vector<Ran> run(
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
    job->request.score_prompt = specs[j].score_prompt;
    job->sampling = specs[j].sampling;
    job->policy = config.policy;
    job->split = config.split;
    Ran& r = out[j];
    r.tokens.resize(specs[j].prompts.size());
    r.logits.resize(specs[j].prompts.size());
    r.finish.resize(specs[j].prompts.size(), Finish::cancelled);
    r.prompt_scores.resize(specs[j].prompts.size());
    job->on_step = [&r, vocab = stack.model->config().vocab](const BatchJob&, const JobStep& s) {
      for (std::size_t i = 0; i < s.tokens.size(); ++i) {
        const auto index = static_cast<std::size_t>(s.tokens[i].index);
        r.tokens[index].push_back(s.tokens[i].token);
        if (s.logits.empty()) continue;
        const float* row = s.logits.data() + i * static_cast<std::size_t>(vocab);
        r.logits[index].insert(r.logits[index].end(), row, row + vocab);
      }
      for (const auto& [index, why] : s.finished) r.finish[static_cast<std::size_t>(index)] = why;
      for (const auto& p : s.prompts) {
        EXPECT_TRUE(r.prompt_scores[static_cast<std::size_t>(p.index)].empty())
            << "a prompt is scored once";
        r.prompt_scores[static_cast<std::size_t>(p.index)] = p.tokens;
      }
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

inline std::vector<std::int32_t> prompt(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> p{2};
  while (std::ssize(p) < n) p.push_back(static_cast<std::int32_t>(3 + rng() % (vocab - 3)));
  return p;
}

// The second-best margin of a logits row (for near-ties).
inline float margin(const float* row, std::int64_t vocab) {
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
inline void expect_same(const Ran& batched, const Ran& alone, std::int64_t vocab,
                        const std::string& what, float tolerance = kLogitTolerance) {
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

inline const Config kOpt{"opt-2l-h64", planner::Policy::kvpr, 3, "opt"};

inline std::int64_t opt_vocab() {
  static const std::int64_t v =
      testing::Stack(kData + kOpt.model, kOpt.policy, kOpt.split).model->config().vocab;
  return v;
}

}  // namespace kvpr::worker::batcher_testing
