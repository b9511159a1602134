// The batcher's admission pass and decode step (see batcher.h for the rules they keep).
#include "batcher_internal.h"
#include "kvpr/common/log.h"

namespace kvpr::worker {

namespace {

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

// Whether the store has room for `seq` beside what the running sequences may still grow by;
// `free` is the store's free bytes, decreased by what an admission takes.
bool Batcher::fits(const Seq& seq, std::uint64_t& free) const {
  const bool full = options_.admit == AdmitReserve::full;
  const auto max_new = seq.job->request.max_new_tokens;
  const std::uint64_t need = seq_bytes(full ? seq.prompt_len + max_new : seq.length());
  std::uint64_t growth = 0;
  for (const auto& r : running_) {
    const std::int64_t until =
        full ? r->prompt_len + r->job->request.max_new_tokens : r->length() + 1;
    growth += seq_bytes(until) - std::min(seq_bytes(until), seq_bytes(r->length()));
  }
  if (need + growth > free) return false;
  free -= need;
  return true;
}

void Batcher::use_engine_of(const BatchJob& job) {
  if (engine_ && job.policy == policy_ && job.split == split_) return;
  EngineOptions o = options_.engine;
  o.policy = job.policy;
  o.split = job.split;
  engine_ = std::make_unique<Engine>(model_, backend_, store_, planner_, o);
  policy_ = job.policy;
  split_ = job.split;
}

// Builds the sequence's cache: its prompt when it is new (and samples its first token from the
// prompt's last logits), or all its tokens but the last when it resumes after a preemption (the
// last is the input of its next decode step, as it was when it was preempted).
void Batcher::prefill(Seq& seq, Report& report) {
  const auto start = Clock::now();
  const bool resume = seq.generated() > 0;
  std::vector<float> logits;
  const std::span<const std::int32_t> context(seq.tokens.data(),
                                              seq.tokens.size() - (resume ? 1 : 0));
  seq.handle = engine_->prefill(context, logits);
  seq.job->summary.prefill_s += since(start);
  seq.admitted = ++admissions_;
  seq.job->started = true;
  if (!resume) emit(seq, logits.data(), report);
}

// Admits waiting sequences in order while the batch has room, the store can hold them and the
// step's prefill budget lasts (the first admission of a pass always fits the budget, so a long
// prompt is not starved). Returns whether it admitted anything.
bool Batcher::admit(Report& report) {
  if (waiting_.empty() || std::ssize(running_) >= options_.max_batch) return false;
  std::int64_t budget = options_.max_prefill_tokens_per_step;
  std::uint64_t free = 0;
  try {
    const auto st = store_.stats();
    free = st.capacity_bytes - std::min(st.capacity_bytes, st.used_bytes);
  } catch (const Error& e) {  // the store is unreachable: the request at the head fails with it
    drop_job(*waiting_.front()->job, e);
    return true;
  }
  bool any = false;
  while (!waiting_.empty() && std::ssize(running_) < options_.max_batch) {
    Seq& head = *waiting_.front();
    if (!running_.empty() && (head.job->policy != policy_ || head.job->split != split_)) break;
    const std::int64_t n = head.length() - (head.generated() > 0 ? 1 : 0);
    if (any && n > budget) break;
    if (!fits(head, free)) break;
    std::unique_ptr<Seq> seq = std::move(waiting_.front());
    waiting_.pop_front();
    try {
      use_engine_of(*seq->job);
      prefill(*seq, report);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::overloaded) {  // the store filled behind our back: wait
        waiting_.push_front(std::move(seq));
        break;
      }
      drop_job(*seq->job, e);
      continue;
    }
    budget -= n;
    any = true;
    if (seq->done) {
      release(*seq);
      report.finished_if_last(*seq->job);
    } else {
      running_.push_back(std::move(seq));
    }
  }
  return any;
}

void Batcher::preempt_youngest() {
  auto it = std::max_element(running_.begin(), running_.end(), [](const auto& a, const auto& b) {
    return a->admitted < b->admitted;
  });
  Seq& seq = **it;
  log::debug("preempting request ", seq.job->id, " sequence ", seq.index, " at ", seq.length(),
             " tokens");
  release(seq);
  ++counters_.preemptions;
  waiting_.push_front(std::move(*it));
  running_.erase(it);
}

// One decode step over the running batch. A store too full for the step preempts the youngest
// sequence and retries; any other failure fails every job in the batch (its sequences freed).
bool Batcher::decode(Report& report) {
  std::vector<float> logits;
  for (;;) {
    if (running_.empty()) return false;
    std::vector<SeqHandle> seqs;
    std::vector<std::int32_t> inputs;
    for (const auto& seq : running_) {
      seqs.push_back(*seq->handle);
      inputs.push_back(seq->tokens.back());
    }
    try {
      logits = engine_->decode(seqs, inputs);
      break;
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::overloaded) {
        preempt_youngest();
        continue;
      }
      std::vector<BatchJob*> jobs;
      for (const auto& seq : running_) jobs.push_back(seq->job.get());
      for (BatchJob* job : jobs) drop_job(*job, e);
      return true;
    }
  }
  ++steps_;
  const StepStats& stats = engine_->last_step();
  if (on_decode_step) on_decode_step(stats);
  const auto vocab = model_.config().vocab;
  for (std::size_t i = 0; i < running_.size(); ++i) {
    Seq& seq = *running_[i];
    report.of(*seq.job, steps_, &stats);
    Report::plan_row(*seq.job, stats.plan, i, seq.index);
    emit(seq, logits.data() + i * static_cast<std::size_t>(vocab), report);
  }
  for (auto& seq : running_) {
    if (seq->done) {
      release(*seq);
      report.finished_if_last(*seq->job);
    }
  }
  std::erase_if(running_, [](const auto& s) { return s->done; });
  return true;
}

// Samples the sequence's next token from its logits row, reports it and finishes the sequence
// on a stop id, at max_new_tokens or at the model's last position.
void Batcher::emit(Seq& seq, const float* row, Report& report) {
  BatchJob& job = *seq.job;
  const auto vocab = model_.config().vocab;
  const TokenChoice choice =
      seq.sampler.next(std::span<const float>(row, static_cast<std::size_t>(vocab)));
  seq.tokens.push_back(choice.token);
  JobStep& out = report.of(job, steps_, nullptr);
  out.with_logprobs = job.sampling.logprobs >= 0;
  out.tokens.push_back({seq.index, choice.token, choice.logprob, choice.top});
  if (job.request.keep_logits) out.logits.insert(out.logits.end(), row, row + vocab);
  if (seq.sampler.stops(choice.token)) {
    out.finished.emplace_back(seq.index, Finish::stop);
    seq.done = true;
  } else if (seq.generated() >= job.request.max_new_tokens ||
             seq.length() >= model_.config().max_positions) {
    out.finished.emplace_back(seq.index, Finish::length);
    seq.done = true;
  }
}

}  // namespace kvpr::worker
