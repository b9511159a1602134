// The batcher choosing tokens where the logits are (Backend::sample, Engine::decode_sampled):
// the tokens the host path gives, through preemptions, with no logits row leaving the device; and
// the batcher on every registered backend.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "batcher_support.h"

namespace kvpr::worker {
namespace {

using namespace batcher_testing;  // NOLINT(google-build-using-namespace): the suite's vocabulary

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

// A prompt's first token chosen where its logits are (Engine::prefill with a PromptChoice): the
// token, log-probability and top-n the host path gives from the same row, whole and in chunks;
// device→host bytes are the store's write-back alone (a chunk that chooses nothing computes no
// logits), where the host path's also carry the row.
TEST(Batcher, APromptsFirstTokenIsChosenWhereItsLogitsAre) {
  testing::Stack st(kData + kOpt.model, kOpt.policy, kOpt.split);
  const auto& shape = st.store->shape();
  const auto vocab = st.model->config().vocab;
  const auto token_bytes =
      static_cast<std::uint64_t>(shape.n_layers * (shape.h + 2 * shape.h_kv) *
                                 static_cast<std::int64_t>(size_of(shape.dtype)));
  const auto p = prompt(13, vocab, 5);
  const std::span<const std::int32_t> all(p);
  const auto d2h = [&st] { return st.backend->copy_stats().d2h_bytes; };
  SamplingParams params;
  params.temperature = 0.8;
  params.top_k = 50;
  params.top_p = 0.9;
  params.logprobs = 3;

  std::vector<float> logits;
  auto before = d2h();
  const SeqHandle host_seq = st.engine->prefill(all, logits);
  EXPECT_EQ(d2h() - before,
            p.size() * token_bytes + static_cast<std::uint64_t>(vocab) * sizeof(float))
      << "the host path's row is counted (the measure can see a row)";
  Sampler host(params, {}, 11);
  const TokenChoice want = host.next(logits);
  st.engine->release(host_seq);

  Sampler whole(params, {}, 11);
  PromptChoice choice{whole.prepare(), {}};
  before = d2h();
  const SeqHandle whole_seq = st.engine->prefill(all, PromptOut{.choice = &choice});
  EXPECT_EQ(d2h() - before, p.size() * token_bytes) << "no logits row left the device";
  const TokenChoice got = whole.accept(choice.chosen);
  EXPECT_EQ(got.token, want.token);
  EXPECT_EQ(got.logprob, want.logprob);
  EXPECT_EQ(got.top, want.top);
  EXPECT_EQ(got.top.size(), 3u);
  st.engine->release(whole_seq);

  Sampler chunked(params, {}, 11);
  before = d2h();
  const SeqHandle chunked_seq = st.engine->prefill(all.first(5), PromptOut{});
  EXPECT_EQ(d2h() - before, 5 * token_bytes) << "a chunk that chooses nothing computes no logits";
  PromptChoice rest{chunked.prepare(), {}};
  st.engine->extend(chunked_seq, all.subspan(5), PromptOut{.choice = &rest});
  const TokenChoice last = chunked.accept(rest.chosen);
  EXPECT_EQ(last.token, want.token);
  EXPECT_NEAR(last.logprob, want.logprob, kLogitTolerance);
  EXPECT_EQ(st.engine->length(chunked_seq), std::ssize(p));
  st.engine->release(chunked_seq);
}

// A scored prompt (GenerateRequest::score_prompt, the gateway's echo with logprobs): entry p is
// prompt token p + 1's log-probability under the logits of position p, and the most likely
// tokens there — the log-softmax of a whole-prompt prefill's rows, though the prompt went in
// chunks beside another request; the tokens are what the request gets unscored, and a request
// that did not ask gets no scores.
TEST(Batcher, AScoredPromptHasEachTokensLogprobUnderThePositionBefore) {
  const auto vocab = opt_vocab();
  // The third repeats the first: a request's n samples of one prompt are scored once.
  const std::vector<std::vector<std::int32_t>> prompts = {
      prompt(23, vocab, 81), prompt(9, vocab, 82), prompt(23, vocab, 81)};
  JobSpec scored = spec(prompts, 4);
  scored.sampling.logprobs = 2;
  scored.sampling.ignore_eos = true;
  scored.keep_logits = false;
  scored.score_prompt = true;
  JobSpec other = spec({prompt(17, vocab, 83)}, 6);
  other.keep_logits = false;
  other.arrive = 1;
  BatcherOptions options;
  options.max_prefill_tokens_per_step = 7;  // every prompt goes in chunks
  const auto ran = run(kOpt, {scored, other}, options);
  JobSpec unscored = scored;
  unscored.score_prompt = false;
  const auto alone = run(kOpt, {unscored});
  ASSERT_TRUE(ran[0].error.empty()) << ran[0].error;
  EXPECT_EQ(ran[0].tokens, alone[0].tokens) << "scoring changes no token";
  EXPECT_TRUE(ran[1].prompt_scores[0].empty()) << "a request that did not ask gets no scores";

  EXPECT_TRUE(ran[0].prompt_scores[2].empty()) << "the same prompt is scored once";
  testing::Stack st(kData + kOpt.model, kOpt.policy, kOpt.split);
  for (std::size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const auto& p = prompts[i];
    std::vector<float> logits;
    st.engine->release(st.engine->prefill(p, logits, true));
    const auto& got = ran[0].prompt_scores[i];
    ASSERT_EQ(got.size(), p.size() - 1);
    for (std::size_t t = 0; t + 1 < p.size(); ++t) {
      const float* row = logits.data() + t * static_cast<std::size_t>(vocab);
      double max = row[0], sum = 0;
      for (std::int64_t v = 0; v < vocab; ++v) max = std::max<double>(max, row[v]);
      for (std::int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
      const auto logprob = [&](std::int32_t v) { return row[v] - max - std::log(sum); };
      EXPECT_NEAR(got[t].logprob, logprob(p[t + 1]), 1e-3) << "prompt token " << t + 1;
      std::vector<std::int32_t> ids(static_cast<std::size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 2, ids.end(),
                        [&](std::int32_t a, std::int32_t b) { return row[a] > row[b]; });
      ASSERT_EQ(got[t].top.size(), 2u);
      for (std::size_t k = 0; k < 2; ++k) {
        EXPECT_EQ(got[t].top[k].token, ids[k]) << "position " << t << " top " << k;
        EXPECT_NEAR(got[t].top[k].logprob, logprob(ids[k]), 1e-3);
      }
    }
  }
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
