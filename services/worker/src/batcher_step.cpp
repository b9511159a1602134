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
  for (const auto& p : prefilling_) {  // the rest of their context, and their growth
    const std::int64_t until =
        full ? p->prompt_len + p->job->request.max_new_tokens : p->length() + 1;
    growth += seq_bytes(until) - std::min(seq_bytes(until), seq_bytes(p->cached));
  }
  if (need + growth > free) return false;
  free -= need;
  return true;
}

void Batcher::use_engine_of(const BatchJob& job) {
  const auto host_split = job.host_split ? job.host_split : options_.engine.host_split;
  if (engine_ && job.policy == policy_ && job.split == split_ && host_split == host_split_) return;
  EngineOptions o = options_.engine;
  o.policy = job.policy;
  o.split = job.split;
  o.host_split = host_split;
  engine_ = std::make_unique<Engine>(model_, backend_, store_, planner_, o);
  policy_ = job.policy;
  split_ = job.split;
  host_split_ = host_split;
}

// Builds the sequence's cache, a chunk of at most `budget` tokens at a time: its prompt when it
// is new (its first token is chosen from the prompt's last logits once all of it is in), or all
// its tokens but the last when it resumes after a preemption (the last is the input of its next
// decode step, as it was when it was preempted). The first token is chosen where the logits are,
// as a decode step's are, unless the request keeps its logits rows (the last row comes to the
// host) or scores its prompt (every row of the prompt does, in chunks of at most kScoreBytes of
// logits); a chunk that chooses nothing computes no logits. Of a job's sequences with the same
// prompt (a request's n samples) only the first is scored.
bool Batcher::prefill(Seq& seq, std::int64_t budget, Report& report) {
  const auto start = Clock::now();
  const bool resume = seq.generated() > 0;
  const bool score = !resume && seq.scores_prompt;
  const auto vocab = static_cast<std::size_t>(model_.config().vocab);
  if (score) {
    constexpr std::size_t kScoreBytes = 64u << 20;  // the host's share of a scored chunk's rows
    budget = std::min(budget, static_cast<std::int64_t>(
                                  std::max<std::size_t>(1, kScoreBytes / (vocab * sizeof(float)))));
  }
  const std::int64_t chunk = std::min(budget, seq.context() - seq.cached);
  const std::span<const std::int32_t> part(seq.tokens.data() + seq.cached,
                                           static_cast<std::size_t>(chunk));
  const bool first_token = !resume && seq.cached + chunk == seq.context();
  const bool host_row = first_token && (seq.job->request.keep_logits || score);
  std::vector<float> logits;
  std::optional<PromptChoice> choice;
  PromptOut out;
  if (host_row || score) {
    out = {&logits, score, nullptr};
  } else if (first_token) {
    choice = PromptChoice{seq.sampler.prepare(), {}};
    out.choice = &*choice;
  }
  if (!seq.handle) {
    seq.handle = engine_->prefill(part, out);
    seq.admitted = ++admissions_;
    seq.job->started = true;
  } else {
    engine_->extend(*seq.handle, part, out);
  }
  if (score) score_rows(seq, logits);
  seq.cached += chunk;
  seq.job->summary.prefill_s += since(start);
  if (host_row) {
    const float* row = logits.data() + logits.size() - vocab;  // the prompt's last position
    if (score) {  // sent once and not kept: a resumed sequence is not scored again
      report.of(*seq.job, steps_, nullptr)
          .prompts.push_back({seq.index, std::exchange(seq.prompt_scores, {})});
    }
    emit(seq, seq.sampler.next(std::span<const float>(row, vocab)), row, report);
  } else if (choice) {
    emit(seq, seq.sampler.accept(choice->chosen), nullptr, report);
  }
  return seq.cached == seq.context();
}

// The scores of the prompt tokens a chunk's rows predict (row j, at position cached + j, scores
// prompt token cached + j + 1).
void Batcher::score_rows(Seq& seq, const std::vector<float>& logits) {
  const auto vocab = static_cast<std::size_t>(model_.config().vocab);
  seq.prompt_scores.resize(static_cast<std::size_t>(std::max<std::int64_t>(0, seq.prompt_len - 1)));
  const std::size_t rows = logits.size() / vocab;
  const std::int32_t top_n = std::max(seq.job->sampling.logprobs, 0);
  for (std::size_t j = 0; j < rows; ++j) {
    const auto p = static_cast<std::size_t>(seq.cached) + j;
    if (p + 1 >= static_cast<std::size_t>(seq.prompt_len)) break;
    const std::int32_t target = seq.tokens[p + 1];
    const auto scored = kernels::score_row(std::span<const float>(logits.data() + j * vocab, vocab),
                                           target, top_n, score_scratch_);
    TokenOut& out = seq.prompt_scores[p];
    out = {seq.index, target, scored.logprob, {}};
    for (const auto& [token, logprob] : scored.top) out.top.push_back({token, logprob});
  }
}

void Batcher::place(std::unique_ptr<Seq> seq, bool complete, Report& report) {
  if (!complete) {
    prefilling_.push_back(std::move(seq));
  } else if (seq->done) {
    release(*seq);
    report.finished_if_last(*seq->job);
  } else {
    running_.push_back(std::move(seq));
  }
}

// Continues the chunked prefills, then admits waiting sequences in order while the batch has
// room, the store can hold them and the step's prefill budget lasts. A store that fills during a
// chunk sends that sequence back to the front of the queue (its blocks freed). Returns whether it
// prefilled anything.
bool Batcher::admit(Report& report) {
  std::int64_t budget = options_.max_prefill_tokens_per_step;
  bool any = false;
  auto requeue = [&](std::unique_ptr<Seq> seq) {
    release(*seq);
    waiting_.push_front(std::move(seq));
  };
  std::vector<std::unique_ptr<Seq>> continuing;
  continuing.swap(prefilling_);
  for (std::size_t i = 0; i < continuing.size(); ++i) {
    auto& seq = continuing[i];
    if (budget <= 0) {
      prefilling_.push_back(std::move(seq));
      continue;
    }
    const std::int64_t before = seq->cached;
    try {
      const bool complete = prefill(*seq, budget, report);
      budget -= seq->cached - before;
      any = true;
      place(std::move(seq), complete, report);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::overloaded) {
        BatchJob& job = *seq->job;
        prefilling_.push_back(std::move(seq));  // drop_job finds and frees it there
        for (std::size_t j = i + 1; j < continuing.size(); ++j) {
          prefilling_.push_back(std::move(continuing[j]));
        }
        drop_job(job, e);
        return true;
      }
      requeue(std::move(seq));
    }
  }
  if (waiting_.empty() || std::ssize(running_) + std::ssize(prefilling_) >= options_.max_batch) {
    return any;
  }
  std::uint64_t free = 0;
  try {
    free = store_.stats().free_bytes();
  } catch (const Error& e) {  // the store is unreachable: the request at the head fails with it
    drop_job(*waiting_.front()->job, e);
    return true;
  }
  while (budget > 0 && !waiting_.empty() &&
         std::ssize(running_) + std::ssize(prefilling_) < options_.max_batch) {
    Seq& head = *waiting_.front();
    const bool idle = running_.empty() && prefilling_.empty();
    const auto host_split =
        head.job->host_split ? head.job->host_split : options_.engine.host_split;
    if (!idle &&
        (head.job->policy != policy_ || head.job->split != split_ || host_split != host_split_)) {
      break;
    }
    if (!fits(head, free)) break;
    std::unique_ptr<Seq> seq = std::move(waiting_.front());
    waiting_.pop_front();
    try {
      use_engine_of(*seq->job);
      const bool complete = prefill(*seq, budget, report);
      budget -= seq->cached;
      any = true;
      place(std::move(seq), complete, report);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::overloaded) {  // the store filled behind our back: wait
        requeue(std::move(seq));
        break;
      }
      release(*seq);  // in no list: drop_job would not find it
      drop_job(*seq->job, e);
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
// Tokens are chosen where the logits are (Engine::decode_sampled), unless a request in the batch
// asked for its logits rows: then the rows come to the host and are sampled there, by the same
// algorithm with the same draws.
bool Batcher::decode(Report& report) {
  std::vector<float> logits;
  std::vector<kernels::SampledRow> sampled;
  bool host_rows = false;
  for (;;) {
    if (running_.empty()) return false;
    std::vector<SeqHandle> seqs;
    std::vector<std::int32_t> inputs;
    host_rows = false;
    for (const auto& seq : running_) {
      seqs.push_back(*seq->handle);
      inputs.push_back(seq->tokens.back());
      host_rows = host_rows || seq->job->request.keep_logits;
    }
    try {
      if (host_rows) {
        logits = engine_->decode(seqs, inputs);
      } else {
        std::vector<kernels::RowSampling> sampling;
        sampling.reserve(running_.size());
        for (const auto& seq : running_) sampling.push_back(seq->sampler.prepare());
        sampled = engine_->decode_sampled(seqs, inputs, sampling);
      }
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
    if (host_rows) {
      const float* row = logits.data() + i * static_cast<std::size_t>(vocab);
      emit(seq, seq.sampler.next(std::span<const float>(row, static_cast<std::size_t>(vocab))), row,
           report);
    } else {
      emit(seq, seq.sampler.accept(sampled[i]), nullptr, report);
    }
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

// Reports the sequence's chosen token and finishes the sequence on a stop id, at max_new_tokens
// or at the model's last position.
void Batcher::emit(Seq& seq, const TokenChoice& choice, const float* row, Report& report) {
  BatchJob& job = *seq.job;
  const auto vocab = model_.config().vocab;
  seq.tokens.push_back(choice.token);
  JobStep& out = report.of(job, steps_, nullptr);
  out.with_logprobs = job.sampling.logprobs >= 0;
  out.tokens.push_back({seq.index, choice.token, choice.logprob, choice.top});
  if (job.request.keep_logits && row != nullptr)
    out.logits.insert(out.logits.end(), row, row + vocab);
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
