// Sampler: greedy is generator.h's greedy(); seeded draws repeat; top_k and top_p never leave their
// sets; temperature-1 draws follow the softmax; penalties follow OpenAI's formulas; logprobs are
// the raw logits' log-softmax; stops() knows EOS and stop ids; a backend's sample op, given
// prepare()'s numbers, chooses what next() chooses, and a pending draw survives a retried step.
// All draws are seeded: no flaky test.
#include "kvpr/worker/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/worker/generator.h"

namespace kvpr::worker {
namespace {

using Row = std::vector<float>;

// Logits drawn from N(0, scale²), rounded to a grid so that some ties occur.
Row random_row(std::size_t vocab, std::uint64_t seed, float scale = 3, float grid = 0) {
  std::mt19937_64 rng(seed);
  Row row(vocab);
  for (float& x : row) {
    x = static_cast<float>((unit_interval(rng) + unit_interval(rng) + unit_interval(rng) - 1.5) *
                           2 * scale);
    if (grid > 0) x = std::round(x / grid) * grid;
  }
  return row;
}

SamplingParams sampling(double temperature, std::int64_t top_k = 0, double top_p = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

// Token ids ordered by logit (descending), lower id first on ties.
std::vector<std::int32_t> ranked(const Row& row) {
  std::vector<std::int32_t> ids(row.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](auto a, auto b) { return row[a] > row[b]; });
  return ids;
}

std::vector<double> softmax(const Row& row, double temperature) {
  const double max = *std::max_element(row.begin(), row.end());
  std::vector<double> p(row.size());
  double sum = 0;
  for (std::size_t i = 0; i < row.size(); ++i) sum += p[i] = std::exp((row[i] - max) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

TEST(Sampler, GreedyIsGeneratorsGreedy) {
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    const Row row = random_row(1000, seed, 3, 0.5f);  // coarse grid: ties at the top happen
    const std::int32_t expected = greedy(row.data(), static_cast<std::int64_t>(row.size()));
    for (const SamplingParams& p :
         {sampling(0), sampling(0, 0, 0.3), sampling(0.8, 1), sampling(2, 1, 0.5), sampling(0, 7),
          sampling(1e-40)}) {  // 1/T overflows a float: T -> 0
      Sampler sampler(p, {}, seed);
      EXPECT_EQ(sampler.next(row).token, expected) << "seed " << seed;
    }
  }
  const Row ties = {1, 5, 2, 5, 5};
  EXPECT_EQ(Sampler(sampling(0), {}, 1).next(ties).token, 1);
}

TEST(Sampler, SameSeedSameTokensOtherSeedOthers) {
  const Row row = random_row(5000, 7, 2);
  for (const SamplingParams& p :
       {sampling(1), sampling(0.7, 40), sampling(1.3, 0, 0.9), sampling(1, 100, 0.95)}) {
    Sampler a(p, {}, 42);
    Sampler b(p, {}, 42);
    Sampler c(p, {}, 43);
    int differ = 0;
    for (int i = 0; i < 500; ++i) {
      const std::int32_t t = a.next(row).token;
      EXPECT_EQ(t, b.next(row).token) << "draw " << i;
      differ += t != c.next(row).token;
    }
    EXPECT_GT(differ, 0);
  }
  // The request's seed is the default seed.
  SamplingParams seeded = sampling(1);
  seeded.seed = 9;
  Sampler from_params(seeded, {});
  Sampler explicit_seed(sampling(1), {}, 9);
  EXPECT_EQ(from_params.seed(), 9U);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(from_params.next(row).token, explicit_seed.next(row).token);
}

TEST(Sampler, TopKStaysInTheKBest) {
  const Row row = random_row(2000, 3, 0.5f, 0.05f);  // flat and tied: a stress for selection
  const std::vector<std::int32_t> order = ranked(row);
  for (const std::int64_t k : {2, 5, 64}) {
    const std::set<std::int32_t> best(order.begin(), order.begin() + k);
    Sampler sampler(sampling(2, k), {}, 5);
    std::set<std::int32_t> seen;
    for (int i = 0; i < 3000; ++i) {
      const std::int32_t t = sampler.next(row).token;
      ASSERT_TRUE(best.count(t)) << "k " << k << " drew " << t;
      seen.insert(t);
    }
    EXPECT_EQ(seen.size(), std::min<std::size_t>(k, 64)) << "every one of the k best is drawn";
  }
}

TEST(Sampler, TopPKeepsTheNucleus) {
  // A tiny top_p keeps the most likely token only.
  const Row row = random_row(3000, 11, 2);
  Sampler tiny(sampling(1.5, 0, 1e-6), {}, 2);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(tiny.next(row).token, ranked(row)[0]);

  // Probabilities .4 .3 .2 .1: top_p .6 keeps {0, 1}, drawn in the ratio 4 : 3.
  const Row four = {std::log(0.3f), std::log(0.4f), std::log(0.1f), std::log(0.2f)};
  Sampler half(sampling(1, 0, 0.6), {}, 3);
  std::map<std::int32_t, int> n;
  for (int i = 0; i < 7000; ++i) ++n[half.next(four).token];
  EXPECT_EQ(n.size(), 2U);
  EXPECT_NEAR(n[1] / 7000.0, 4.0 / 7, 0.02);
  EXPECT_NEAR(n[0] / 7000.0, 3.0 / 7, 0.02);

  // A nucleus of hundreds of tokens (past the first sorted chunks), checked against the set
  // computed here by a full sort.
  Row flat(1000);
  for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = -0.002f * static_cast<float>(i % 500);
  const std::vector<double> p = softmax(flat, 1);
  std::set<std::int32_t> nucleus;
  double cum = 0;
  for (const std::int32_t t : ranked(flat)) {
    nucleus.insert(t);
    if ((cum += p[static_cast<std::size_t>(t)]) >= 0.4) break;
  }
  ASSERT_GT(nucleus.size(), 200U);
  Sampler wide(sampling(1, 0, 0.4), {}, 4);
  std::set<std::int32_t> seen;
  for (int i = 0; i < 5000; ++i) {
    const std::int32_t t = wide.next(flat).token;
    ASSERT_TRUE(nucleus.count(t)) << t;
    seen.insert(t);
  }
  EXPECT_GT(seen.size(), nucleus.size() * 9 / 10);
}

// Pearson's chi-square of 20000 seeded draws against the softmax; 3 degrees of freedom, so 16.3
// is the 0.1% critical value.
TEST(Sampler, DrawsFollowTheSoftmax) {
  const Row row = {1.0f, 0.5f, -0.2f, -1.5f};
  for (const double temperature : {1.0, 0.6, 1.8}) {
    const std::vector<double> p = softmax(row, temperature);
    Sampler sampler(sampling(temperature), {}, 2024);
    std::vector<int> n(row.size());
    const int draws = 20000;
    for (int i = 0; i < draws; ++i) ++n[static_cast<std::size_t>(sampler.next(row).token)];
    double chi2 = 0;
    for (std::size_t t = 0; t < row.size(); ++t) {
      const double expected = draws * p[t];
      chi2 += (n[t] - expected) * (n[t] - expected) / expected;
    }
    EXPECT_LT(chi2, 16.3) << "temperature " << temperature;
  }
}

// OpenAI: logit[t] -= presence · (count[t] > 0) + frequency · count[t], over generated tokens.
TEST(Sampler, PenaltiesFollowTheFormula) {
  SamplingParams presence = sampling(0);
  presence.presence_penalty = 0.5;
  Sampler a(presence, {}, 1);
  const Row row = {1.0f, 0.9f, 0.0f};
  EXPECT_EQ(a.next(row).token, 0);
  EXPECT_EQ(a.next(row).token, 1);  // 1.0 - 0.5 < 0.9
  EXPECT_EQ(a.next(row).token, 0);  // both seen: 0.5 > 0.4
  EXPECT_EQ(a.count(0), 2);

  SamplingParams frequency = sampling(0);
  frequency.frequency_penalty = 0.6;
  Sampler b(frequency, {}, 1);
  const Row steep = {3.0f, 2.0f, 0.0f};
  std::vector<std::int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(b.next(steep).token);
  EXPECT_EQ(got, (std::vector<std::int32_t>{0, 0, 1, 0}));  // 3, 2.4 > 2, 1.8 < 2, 1.8 > 1.4

  // Both at once, negative ones too, against the formula computed here.
  for (const auto& [pres, freq] :
       {std::pair{0.3, 0.2}, std::pair{-0.4, 0.7}, std::pair{1.0, -0.1}}) {
    SamplingParams p = sampling(0);
    p.presence_penalty = pres;
    p.frequency_penalty = freq;
    Sampler s(p, {}, 1);
    const Row r = random_row(50, 8, 0.5f);
    std::map<std::int32_t, int> counts;
    for (int i = 0; i < 60; ++i) {
      Row z = r;
      for (const auto& [t, c] : counts)
        z[static_cast<std::size_t>(t)] -= static_cast<float>(pres * (c > 0) + freq * c);
      const std::int32_t expected = greedy(z.data(), static_cast<std::int64_t>(z.size()));
      const std::int32_t t = s.next(r).token;
      ASSERT_EQ(t, expected) << "step " << i;
      ++counts[t];
    }
  }
}

TEST(Sampler, LogprobsAreTheRawLogSoftmax) {
  Row row = random_row(300, 21, 4);
  row[17] = row[40] = *std::max_element(row.begin(), row.end()) + 1;  // a tie at the top
  long double sum = 0;
  for (const float x : row) sum += std::exp(static_cast<long double>(x));
  const auto log_softmax = [&](std::int32_t t) {
    return static_cast<double>(row[static_cast<std::size_t>(t)] - std::log(sum));
  };
  SamplingParams p = sampling(1.2, 0, 0.9);
  p.logprobs = 5;
  p.presence_penalty = 1;  // penalties change the choice, not the reported logprobs
  Sampler sampler(p, {}, 6);
  const std::vector<std::int32_t> order = ranked(row);
  ASSERT_EQ(order[0], 17);
  ASSERT_EQ(order[1], 40);
  for (int i = 0; i < 20; ++i) {
    const TokenChoice c = sampler.next(row);
    EXPECT_NEAR(c.logprob, log_softmax(c.token), 1e-5);
    ASSERT_EQ(c.top.size(), 5U);
    for (std::size_t j = 0; j < c.top.size(); ++j) {
      EXPECT_EQ(c.top[j].token, order[j]);
      EXPECT_NEAR(c.top[j].logprob, log_softmax(order[j]), 1e-5);
      if (j > 0) {
        EXPECT_GE(c.top[j - 1].logprob, c.top[j].logprob);
      }
    }
  }
  const TokenChoice none = Sampler(sampling(0), {}, 1).next(row);
  EXPECT_TRUE(none.top.empty());
  EXPECT_NEAR(none.logprob, log_softmax(17), 1e-5);
  SamplingParams zero = sampling(0);
  zero.logprobs = 0;
  EXPECT_TRUE(Sampler(zero, {}, 1).next(row).top.empty());
}

TEST(Sampler, StopsOnEosAndStopIds) {
  SamplingParams p;
  p.stop_token_ids = {3};
  const Sampler with_eos(p, {2, 7}, 1);
  EXPECT_TRUE(with_eos.stops(2));
  EXPECT_TRUE(with_eos.stops(7));
  EXPECT_TRUE(with_eos.stops(3));
  EXPECT_FALSE(with_eos.stops(4));
  p.ignore_eos = true;
  const Sampler ignoring(p, {2, 7}, 1);
  EXPECT_FALSE(ignoring.stops(2));
  EXPECT_FALSE(ignoring.stops(7));
  EXPECT_TRUE(ignoring.stops(3));
}

TEST(Sampler, RejectsBadParamsAndRows) {
  EXPECT_THROW(Sampler(sampling(0, -1), {}, 1), Error);
  EXPECT_THROW(Sampler(sampling(3), {}, 1), Error);
  Sampler s(sampling(1), {}, 1);
  EXPECT_THROW(s.next(Row{}), Error);
  EXPECT_THROW(s.next(Row{0.0f, std::numeric_limits<float>::quiet_NaN()}), Error);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_THROW(s.next(Row{-inf, -inf}), Error);
  EXPECT_EQ(s.next(Row{-inf, 0.0f, -inf}).token, 1);  // masked tokens are never drawn
}

// The device path of a step (prepare → Backend::sample → accept) chooses exactly what the host
// path (next) chooses, step after step as penalties accumulate, for every kind of request; on
// the CPU backend the op runs the same function, so equality is exact.
TEST(Sampler, TheBackendOpChoosesWhatNextChooses) {
  auto backend = kernels::make_backend({});
  constexpr std::int64_t kVocab = 3000;
  constexpr std::int64_t kRows = 4;
  auto buffer = backend->alloc(kRows * kVocab * sizeof(float));
  const kernels::Tensor logits = buffer->tensor(DType::f32, kRows, kVocab);
  std::vector<SamplingParams> kinds = {sampling(0), sampling(0.7), sampling(1.3, 40),
                                       sampling(1, 0, 0.9), sampling(0.8, 200, 0.5)};
  kinds[2].presence_penalty = 0.5;
  kinds[3].frequency_penalty = 0.3;
  kinds[4].logprobs = 5;
  kinds[1].logprobs = 0;
  for (std::size_t k = 0; k < kinds.size(); ++k) {
    SCOPED_TRACE(k);
    std::vector<Sampler> host, device;
    for (std::int64_t r = 0; r < kRows; ++r) {
      host.emplace_back(kinds[k], std::vector<std::int32_t>{}, 100 + r);
      device.emplace_back(kinds[k], std::vector<std::int32_t>{}, 100 + r);
    }
    for (int step = 0; step < 6; ++step) {
      Row rows;
      for (std::int64_t r = 0; r < kRows; ++r) {
        const Row row = random_row(kVocab, 1000 * k + 10 * step + r, 3, step % 2 ? 0.25f : 0);
        rows.insert(rows.end(), row.begin(), row.end());
      }
      backend->copy_to_device(kernels::Queue::compute, logits, rows.data(), DType::f32);
      std::vector<kernels::RowSampling> numbers;
      for (auto& s : device) numbers.push_back(s.prepare());
      const auto chosen = backend->sample(logits, numbers);
      ASSERT_EQ(chosen.size(), static_cast<std::size_t>(kRows));
      for (std::int64_t r = 0; r < kRows; ++r) {
        const auto i = static_cast<std::size_t>(r);
        const auto want = host[i].next(
            std::span<const float>(rows.data() + r * kVocab, static_cast<std::size_t>(kVocab)));
        const auto got = device[i].accept(chosen[i]);
        EXPECT_EQ(got.token, want.token) << "step " << step << " row " << r;
        EXPECT_EQ(got.logprob, want.logprob);
        EXPECT_EQ(got.top, want.top);
      }
    }
  }
}

// A step that fails after prepare() (a full store, retried after a preemption) must not consume
// the sequence's draw: the retry gets the same numbers, and the next step a new draw.
TEST(Sampler, APendingDrawSurvivesARetriedStep) {
  Sampler s(sampling(1), {}, 7);
  const auto first = s.prepare();
  const auto retried = s.prepare();
  EXPECT_EQ(first.u, retried.u);
  EXPECT_GE(first.u, 0.0);
  EXPECT_LT(first.u, 1.0);
  Sampler alone(sampling(1), {}, 7);
  const Row row = random_row(50, 3);
  EXPECT_EQ(s.next(row).token, alone.next(row).token);  // the pending draw is the one used
  EXPECT_NE(s.prepare().u, first.u);                    // and then it is spent
  Sampler greedy(sampling(0), {}, 7);
  EXPECT_EQ(greedy.prepare().u, 0.0);  // greedy draws nothing
}

// The op's arguments are checked before any backend sees them, each error naming the value.
TEST(Sampler, TheBackendOpRejectsBadNumbers) {
  auto backend = kernels::make_backend({});
  auto buffer = backend->alloc(2 * 10 * sizeof(float));
  const kernels::Tensor logits = buffer->tensor(DType::f32, 2, 10);
  const auto fails = [&](std::vector<kernels::RowSampling> rows, const char* needle) {
    try {
      (void)backend->sample(logits, rows);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  kernels::RowSampling ok;
  fails({ok}, "for 1 rows");
  kernels::RowSampling bad = ok;
  bad.u = 1;
  fails({ok, bad}, "the draw u 1");
  bad = ok;
  bad.top_p = 0;
  fails({ok, bad}, "top_p 0");
  bad = ok;
  bad.penalties = {{10, 1.0f}};
  fails({ok, bad}, "penalised token 10");
  bad = ok;
  bad.logprobs = 21;
  fails({ok, bad}, "logprobs 21");
  bad = ok;
  bad.temperature = -1;
  fails({ok, bad}, "temperature -1");
  bad = ok;
  bad.temperature = 1e-45f;  // 1 / T is infinite: every weight would be NaN
  fails({ok, bad}, "too small to divide by");
  kernels::Tensor huge = logits.rows_slice(0, 1);  // a view: the check runs before any read
  huge.cols = kernels::kMaxSampleVocab + 1;
  try {
    (void)backend->sample(huge, std::vector<kernels::RowSampling>{ok});
    ADD_FAILURE() << "accepted a vocabulary of 2^30 + 1";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary of 1073741825 tokens"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kvpr::worker
