#include "kvpr/worker/generator.h"

#include <chrono>

#include "kvpr/common/error.h"

namespace kvpr::worker {

double GenerateResult::decode_tokens_per_s() const {
  double s = 0;
  for (double t : step_s) s += t;
  if (s <= 0 || sequences.empty()) return 0;
  return static_cast<double>(step_s.size() * sequences.size()) / s;
}

std::int32_t greedy(const float* logits, std::int64_t vocab) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

namespace {

// Frees the batch's sequences however generation ends.
class SequenceGuard {
 public:
  explicit SequenceGuard(Engine& engine) : engine_(engine) {}
  ~SequenceGuard() {
    for (auto seq : seqs_) {
      try {
        engine_.release(seq);
      } catch (...) {  // never throw from a destructor; the store reports its own errors
      }
    }
  }
  SequenceGuard(const SequenceGuard&) = delete;
  SequenceGuard& operator=(const SequenceGuard&) = delete;
  std::vector<SeqHandle> seqs_;

 private:
  Engine& engine_;
};

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

GenerateResult generate(Engine& engine, const GenerateRequest& request,
                        const StepCallback& on_step) {
  if (request.prompts.empty()) fail("generate: no prompts");
  if (request.max_new_tokens < 1)
    fail("generate: max_new_tokens must be at least 1, got ", request.max_new_tokens);
  const std::int64_t vocab = engine.config().vocab;
  const auto start = std::chrono::steady_clock::now();
  GenerateResult result;
  result.sequences.resize(request.prompts.size());
  SequenceGuard guard(engine);
  std::vector<std::int32_t> next;
  std::vector<float> logits;
  std::vector<float> first;  // [sequences, vocab] of the prompts' last positions
  for (std::size_t i = 0; i < request.prompts.size(); ++i) {
    guard.seqs_.push_back(engine.prefill(request.prompts[i], logits));
    next.push_back(greedy(logits.data(), vocab));
    auto& seq = result.sequences[i];
    seq.tokens.push_back(next.back());
    if (request.keep_logits) seq.logits.assign(logits.begin(), logits.end());
    first.insert(first.end(), logits.begin(), logits.end());
  }
  result.prefill_s = since(start);
  const std::int64_t steps = request.max_new_tokens - 1;
  if (on_step) on_step({0, steps, next, first, nullptr});
  for (std::int64_t step = 0; step < steps; ++step) {
    logits = engine.decode(guard.seqs_, next);
    const StepStats& st = engine.last_step();
    result.step_s.push_back(st.times.total);
    result.decode_times += st.times;
    result.recompute_tokens += st.recompute_tokens;
    result.transfer_tokens += st.transfer_tokens;
    result.h2d_bytes += st.h2d_bytes;
    result.d2h_bytes += st.d2h_bytes;
    result.last_plan = st.plan;
    for (std::size_t i = 0; i < next.size(); ++i) {
      const float* row = logits.data() + static_cast<std::ptrdiff_t>(i) * vocab;
      next[i] = greedy(row, vocab);
      auto& seq = result.sequences[i];
      seq.tokens.push_back(next[i]);
      if (request.keep_logits) seq.logits.insert(seq.logits.end(), row, row + vocab);
    }
    if (on_step) on_step({step + 1, steps, next, logits, &st});
  }
  result.total_s = since(start);
  return result;
}

}  // namespace kvpr::worker
