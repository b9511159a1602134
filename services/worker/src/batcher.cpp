#include "kvpr/worker/batcher.h"

#include <algorithm>

#include "batcher_internal.h"
#include "kvpr/common/log.h"

namespace kvpr::worker {

AdmitReserve parse_admit(std::string_view name) {
  if (name == "full") return AdmitReserve::full;
  if (name == "prompt") return AdmitReserve::prompt;
  fail("--admit must be full or prompt, got '", name, "'");
}

void BatchJob::request_stop(std::int64_t index) {
  std::lock_guard lock(stop_mutex_);
  stopped_.push_back(index);
}

bool BatchJob::stop_requested(std::int64_t index) const {
  std::lock_guard lock(stop_mutex_);
  return std::find(stopped_.begin(), stopped_.end(), index) != stopped_.end();
}

Batcher::Batcher(const DeviceModel& model, kernels::Backend& backend, kvstore::KvStoreClient& store,
                 planner::Planner& planner, BatcherOptions options)
    : model_(model), backend_(backend), store_(store), planner_(planner), options_(options) {
  if (options_.max_batch < 1) fail("--max-batch must be at least 1, got ", options_.max_batch);
  if (options_.max_prefill_tokens_per_step < 1) {
    fail("--max-prefill-tokens-per-step must be at least 1, got ",
         options_.max_prefill_tokens_per_step);
  }
}

Batcher::~Batcher() {
  for (auto& seq : running_) release(*seq);
  for (auto& seq : prefilling_) release(*seq);
}

std::size_t Batcher::waiting_jobs() const {
  std::vector<const BatchJob*> jobs;
  for (const auto& seq : waiting_) {
    if (std::find(jobs.begin(), jobs.end(), seq->job.get()) == jobs.end()) {
      jobs.push_back(seq->job.get());
    }
  }
  return jobs.size();
}

std::uint64_t Batcher::seq_bytes(std::int64_t tokens) const {
  const auto& shape = store_.shape();
  const std::int64_t blocks = (tokens + shape.block_tokens - 1) / shape.block_tokens;
  return static_cast<std::uint64_t>(blocks) * shape.block_bytes() *
         static_cast<std::uint64_t>(shape.n_layers);
}

void Batcher::submit(const std::shared_ptr<BatchJob>& job) {
  const auto& r = job->request;
  const std::uint64_t capacity = store_.stats().capacity_bytes;
  for (const auto& prompt : r.prompts) {
    const auto tokens = static_cast<std::int64_t>(prompt.size()) +
                        (options_.admit == AdmitReserve::full ? r.max_new_tokens : 0);
    if (seq_bytes(tokens) > capacity) {
      job->failed = true;
      if (job->on_error) {
        job->on_error(
            *job, Error(ErrorKind::overloaded, str("request ", job->id, " needs ",
                                                   seq_bytes(tokens), " bytes of KV store for ",
                                                   tokens, " tokens; the store holds ", capacity)));
      }
      return;
    }
  }
  job->open = static_cast<std::int64_t>(r.prompts.size());
  // A split per sequence even when no decode step runs (max_new_tokens 1): l = 0, nothing reused.
  job->summary.last_plan.policy = job->policy;
  job->summary.last_plan.l.assign(r.prompts.size(), 0);
  const std::vector<std::int32_t> eos = model_.config().eos_ids();
  for (std::size_t i = 0; i < r.prompts.size(); ++i) {
    SamplingParams params = job->sampling;
    if (params.seed) params.seed = *params.seed + i;
    waiting_.push_back(
        std::make_unique<Seq>(job, static_cast<std::int64_t>(i), Sampler(params, eos)));
  }
}

void Batcher::release(Seq& seq) {
  if (!seq.handle) return;
  try {
    engine_->release(*seq.handle);
  } catch (const std::exception& e) {  // the store reports its own errors; keep serving
    log::warn("releasing a sequence of request ", seq.job->id, ": ", e.what());
  }
  seq.handle.reset();
  seq.cached = 0;
}

// Fails a job once and removes all of its sequences.
// The job's sequences leave the store before its error is reported: whoever hears of the failure
// finds the store's room given back.
void Batcher::drop_job(BatchJob& job, const Error& e) {
  std::shared_ptr<BatchJob> keep;  // the job outlives its sequences until its error is reported
  for (auto* list : {&running_, &prefilling_}) {
    for (auto& seq : *list) {
      if (seq->job.get() == &job) {
        keep = seq->job;
        release(*seq);
        seq->done = true;
      }
    }
    std::erase_if(*list, [](const auto& s) { return s->done; });
  }
  std::erase_if(waiting_, [&](const auto& s) {
    if (s->job.get() != &job) return false;
    keep = s->job;
    return true;
  });
  if (!job.failed) {
    job.failed = true;
    if (job.on_error) job.on_error(job, e);
  }
}

// Cancelled, stopped and expired work leaves before anything else runs.
void Batcher::reap(Report& report) {
  const auto now = Clock::now();
  std::vector<BatchJob*> expired;
  auto reap_one = [&](Seq& seq) {
    BatchJob& job = *seq.job;
    if (job.cancelled || job.stop_requested(seq.index)) {
      if (job.cancelled) ++counters_.cancellations;
      release(seq);
      seq.done = true;
      report.of(job, steps_, nullptr).finished.emplace_back(seq.index, Finish::cancelled);
      report.finished_if_last(job);
    } else if (now > job.deadline &&
               std::find(expired.begin(), expired.end(), &job) == expired.end()) {
      expired.push_back(&job);
    }
  };
  for (auto& seq : running_) reap_one(*seq);
  for (auto& seq : prefilling_) reap_one(*seq);
  for (auto& seq : waiting_) reap_one(*seq);
  std::erase_if(running_, [](const auto& s) { return s->done; });
  std::erase_if(prefilling_, [](const auto& s) { return s->done; });
  std::erase_if(waiting_, [](const auto& s) { return s->done; });
  for (BatchJob* job : expired) {
    drop_job(*job, Error(ErrorKind::overloaded, str("request ", job->id, " passed its deadline")));
  }
}

bool Batcher::step() {
  Report report;
  reap(report);
  report.deliver();
  const bool admitted = admit(report);
  report.deliver();
  const bool decoded = decode(report);
  report.deliver();
  return admitted || decoded;
}

}  // namespace kvpr::worker
