// The batcher's per-sequence state and the report of one pass (batcher.cpp, batcher_step.cpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <utility>

#include "kvpr/worker/batcher.h"
#include "kvpr/worker/sampler.h"

namespace kvpr::worker {

using Clock = std::chrono::steady_clock;

// One sequence of a job: its tokens so far (prompt, then generated), its sampler (RNG and the
// penalty counts live here, so a preempted sequence resumes exactly where it was) and, while it
// is in the batch, its handle in the engine.
struct Batcher::Seq {
  Seq(std::shared_ptr<BatchJob> j, std::int64_t i, Sampler s)
      : job(std::move(j)), index(i), sampler(std::move(s)) {
    const auto& prompt = job->request.prompts[static_cast<std::size_t>(index)];
    tokens.assign(prompt.begin(), prompt.end());
    prompt_len = static_cast<std::int64_t>(tokens.size());
    const auto& prompts = job->request.prompts;
    scores_prompt = job->request.score_prompt &&
                    std::none_of(prompts.begin(), prompts.begin() + index,
                                 [&](const auto& earlier) { return earlier == prompt; });
  }
  std::int64_t generated() const { return static_cast<std::int64_t>(tokens.size()) - prompt_len; }
  std::int64_t length() const { return static_cast<std::int64_t>(tokens.size()); }
  // The tokens its cache must hold before it decodes: all but the last (the next step's input)
  // once it has generated, else its prompt.
  std::int64_t context() const { return length() - (generated() > 0 ? 1 : 0); }

  std::shared_ptr<BatchJob> job;
  std::int64_t index = 0;
  std::vector<std::int32_t> tokens;
  std::int64_t prompt_len = 0;
  Sampler sampler;
  std::optional<SeqHandle> handle;
  std::int64_t cached = 0;     // context tokens in the cache (chunked prefill)
  std::uint64_t admitted = 0;  // admission order: the largest is the youngest
  bool done = false;
  bool scores_prompt = false;  // request.score_prompt, and no earlier sequence has this prompt
  // request.score_prompt: entry p scores prompt token p + 1 (filled chunk by chunk, by position,
  // so a prefill that starts over after its store filled overwrites what it had).
  std::vector<TokenOut> prompt_scores;
};

// The events one pass produces, per job in first-touched order, and the jobs that finished.
class Batcher::Report {
 public:
  JobStep& of(BatchJob& job, std::int64_t step, const StepStats* stats) {
    for (auto& [j, s] : steps_) {
      if (j == &job) return s;
    }
    steps_.emplace_back(&job, JobStep{});
    JobStep& s = steps_.back().second;
    s.step = step;
    s.stats = stats;
    if (stats != nullptr) {  // the job took part in this decode step
      auto& r = job.summary;
      r.step_s.push_back(stats->times.total);
      r.decode_times += stats->times;
      r.recompute_tokens += stats->recompute_tokens;
      r.transfer_tokens += stats->transfer_tokens;
      r.h2d_bytes += stats->h2d_bytes;
      r.d2h_bytes += stats->d2h_bytes;
      // The batch's plan, with l (and m) kept for this job's sequences only (plan_row).
      std::vector<std::int64_t> l = std::move(r.last_plan.l);
      std::vector<std::int64_t> m = std::move(r.last_plan.m);
      r.last_plan = stats->plan;
      const auto n = job.request.prompts.size();
      l.resize(n, 0);
      if (!stats->plan.m.empty()) m.resize(n, 0);
      r.last_plan.l = std::move(l);
      r.last_plan.m = stats->plan.m.empty() ? std::vector<std::int64_t>{} : std::move(m);
    }
    return s;
  }
  // Row `row` of the step's batch is the job's sequence `index`: its split goes to the summary.
  static void plan_row(BatchJob& job, const planner::Plan& plan, std::size_t row,
                       std::int64_t index) {
    auto& p = job.summary.last_plan;
    const auto i = static_cast<std::size_t>(index);
    if (row < plan.l.size()) p.l[i] = plan.l[row];
    if (row < plan.m.size() && i < p.m.size()) p.m[i] = plan.m[row];
  }
  // One of the job's sequences ended; the job is done with its last.
  void finished_if_last(BatchJob& job) {
    if (--job.open == 0) done_.push_back(&job);
  }
  // Steps first (their tokens belong to the job's stream), then the summaries of finished jobs.
  void deliver() {
    for (auto& [job, s] : steps_) {
      if (!job->failed && job->on_step) job->on_step(*job, s);
    }
    for (BatchJob* job : done_) {
      if (job->failed) continue;
      job->summary.total_s = std::chrono::duration<double>(Clock::now() - job->accepted_at).count();
      if (job->on_done) job->on_done(*job, job->summary);
    }
    steps_.clear();
    done_.clear();
  }

 private:
  std::vector<std::pair<BatchJob*, JobStep>> steps_;
  std::vector<BatchJob*> done_;
};

}  // namespace kvpr::worker
