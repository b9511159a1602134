// `kvpr batch`: every prompt of a JSONL file through kvpr's continuous batching, results appended
// to a JSONL file as each prompt finishes.
//
// The prompts reach the workers the way the gateway's requests do: through a WorkerUpstream (one
// request per prompt, routed to the worker with the most room), so the worker batches whatever is
// in flight. In-process, the worker service runs in this process on inproc:// (as in kvpr serve);
// with --connect, the workers of a deployment (kvpr up) over CURVE with --keys. `--max-batch`
// threads per worker each keep one prompt in flight.
//
// Interruption: the first SIGINT/SIGTERM stops submitting and lets the prompts in flight finish
// (each is written); a second cancels them (they are not written). Every written line is whole
// and flushed, so the same command resumes where the output ends (batch_files.cpp).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_set>
#include <zmq.hpp>

#include "batch.h"
#include "batch_progress.h"
#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/gateway/text_stream.h"
#include "kvpr/gateway/worker_upstream.h"
#include "kvpr/net/security.h"
#include "kvpr/worker/worker_service.h"
#include "report.h"

namespace kvpr::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// The prompts to run, shared by the threads that keep them in flight.
class BatchRunner {
 public:
  // `wait_for_room`: how long a prompt the workers refuse as full is retried before it counts as
  // refused (0: the embedded worker, whose queue holds every thread's prompt, so a refusal means
  // the prompt can never fit its KV store).
  BatchRunner(gateway::Upstream& upstream, const Tokenizer* tokenizer,
              const std::vector<BatchPrompt>& todo, ResultWriter& writer, Counters& counters,
              std::chrono::milliseconds wait_for_room)
      : upstream_(upstream),
        tokenizer_(tokenizer),
        todo_(todo),
        writer_(writer),
        counters_(counters),
        wait_for_room_(wait_for_room) {}

  // Returns once every prompt ran, or (interrupted or a fatal error) those in flight ended.
  void run(std::int64_t threads) {
    threads_ = threads;
    std::vector<std::thread> pool;
    for (std::int64_t t = 0; t < threads; ++t) pool.emplace_back([this] { loop(); });
    for (auto& thread : pool) thread.join();
    if (fatal_) std::rethrow_exception(fatal_);
  }

 private:
  void loop() {
    while (batch_signals() == 0 && !abort_.load()) {
      const std::size_t i = next_.fetch_add(1);
      if (i >= todo_.size()) return;
      std::optional<json> result;
      try {
        result = run_one(todo_[i]);
      } catch (const Error& e) {
        // The worker refused this request (bad for the model, say): report it and go on; a
        // worker gone or silent ends the job.
        if (e.kind() != ErrorKind::failed || abort_.load())
          return stop_all(std::current_exception());
        counters_.failed.fetch_add(1);
        if (refused_in_a_row_.fetch_add(1) + 1 >= std::max<std::int64_t>(threads_, 2)) {
          return stop_all(std::make_exception_ptr(
              Error(ErrorKind::failed, str("the workers refused ", refused_in_a_row_.load(),
                                           " prompts in a row (the last: ", e.what(), ")"))));
        }
        const std::string line = str("kvpr batch: input line ", todo_[i].index + 1,
                                     ": the worker refused it: ", e.what(), "\n");
        std::fputs(line.c_str(), stderr);
      } catch (const std::exception&) {
        return stop_all(std::current_exception());
      }
      if (!result) continue;
      try {
        writer_.write(*result);
      } catch (const std::exception&) {
        return stop_all(std::current_exception());
      }
      counters_.done.fetch_add(1);
      refused_in_a_row_.store(0);
    }
  }

  void stop_all(std::exception_ptr error) {
    std::lock_guard lock(mutex_);
    if (!fatal_) fatal_ = std::move(error);
    abort_.store(true);
  }

  // Runs one prompt; nullopt when it was cancelled before it ended (a second signal).
  std::optional<json> run_one(const BatchPrompt& prompt) {
    std::unordered_set<std::int32_t> skip(prompt.request.sampling.stop_token_ids.begin(),
                                          prompt.request.sampling.stop_token_ids.end());
    std::optional<gateway::SequenceText> text;
    if (tokenizer_ != nullptr) {
      if (tokenizer_->bos_id()) skip.insert(*tokenizer_->bos_id());
      if (tokenizer_->eos_id()) skip.insert(*tokenizer_->eos_id());
    }
    std::vector<std::int32_t> tokens;
    std::string out;
    std::optional<gateway::FinishReason> finish;
    bool cancelled = false;
    bool stopped_by_string = false;
    gateway::UpstreamCallbacks callbacks;
    callbacks.on_token = [&](const gateway::TokenEvent& event) {
      if (batch_signals() > 1 || abort_.load()) {
        cancelled = true;
        return false;
      }
      if (finish) return false;
      tokens.push_back(event.token);
      counters_.tokens.fetch_add(1);
      if (!text) return true;
      auto piece = text->push(event.token);
      out += piece.text;
      if (piece.stopped) {
        finish = gateway::FinishReason::stop;
        stopped_by_string = true;
      }
      return !piece.stopped;
    };
    callbacks.on_finish = [&](std::int64_t /*index*/, gateway::FinishReason reason) {
      if (!finish) finish = reason;
    };
    const auto first_try = Clock::now();
    for (;;) {  // a full deployment: wait for room (nothing was delivered yet)
      if (tokenizer_ != nullptr) text.emplace(*tokenizer_, skip, prompt.stop);
      try {
        upstream_.generate(prompt.request, callbacks);
        break;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::overloaded || !tokens.empty() || batch_signals() > 0) throw;
        if (Clock::now() - first_try >= wait_for_room_) raise(ErrorKind::failed, e.what());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (cancelled && !finish) return std::nullopt;
    if (!finish) finish = gateway::FinishReason::length;
    if (text && !stopped_by_string) out += text->finish();  // else: the rest is the stop string
    const auto n = static_cast<std::int64_t>(tokens.size());
    json result = {
        {"index", prompt.index},
        {"tokens", tokens},
        {"finish_reason", *finish == gateway::FinishReason::stop ? "stop" : "length"},
        {"usage",
         {{"prompt_tokens", prompt.request.prompt.size()},
          {"completion_tokens", n},
          {"total_tokens", static_cast<std::int64_t>(prompt.request.prompt.size()) + n}}}};
    if (text) result["text"] = out;
    return result;
  }

  gateway::Upstream& upstream_;
  const Tokenizer* tokenizer_;
  const std::vector<BatchPrompt>& todo_;
  ResultWriter& writer_;
  Counters& counters_;
  std::atomic<std::size_t> next_{0};
  std::chrono::milliseconds wait_for_room_;
  std::int64_t threads_ = 1;
  std::atomic<std::int64_t> refused_in_a_row_{0};
  std::atomic<bool> abort_{false};
  std::mutex mutex_;
  std::exception_ptr fatal_;
};

// The workers the prompts go to, and what they need while they live: the embedded services, or
// the keys of a deployment. Torn down in reverse (the upstream's sockets first, then the service).
struct Workers {
  zmq::context_t context;
  std::unique_ptr<net::Security> security;
  std::unique_ptr<Embedded> embedded;
  std::unique_ptr<worker::WorkerService> service;
  std::unique_ptr<gateway::WorkerUpstream> upstream;
  std::size_t count = 0;

  ~Workers() {
    upstream.reset();
    if (service) service->stop();
  }
};

std::vector<std::string> split_endpoints(const std::string& list) {
  std::vector<std::string> endpoints;
  for (std::size_t pos = 0; pos <= list.size();) {
    const auto comma = std::min(list.find(',', pos), list.size());
    const std::string endpoint = list.substr(pos, comma - pos);
    if (endpoint.find("://") == std::string::npos) {
      fail("--connect: '", endpoint, "' is not an endpoint such as tcp://127.0.0.1:5557");
    }
    endpoints.push_back(endpoint);
    pos = comma + 1;
  }
  return endpoints;
}

// --connect runs on a deployment's workers; the flags that shape the embedded ones do nothing
// there, so they are refused before any work.
void check_connect_flags(const BatchOptions& o) {
  const BackendFlags defaults;
  if (o.backend.backend != defaults.backend ||
      o.backend.emulate_link_gbps != defaults.emulate_link_gbps ||
      o.backend.emulate_link_latency_us != defaults.emulate_link_latency_us ||
      o.backend.threads != defaults.threads || o.capacity_bytes != BatchOptions{}.capacity_bytes ||
      o.planner != BatchOptions{}.planner || o.host_threads != BatchOptions{}.host_threads) {
    fail(
        "--backend, --emulate-link-*, --threads, --kv-capacity, --planner and --host-threads "
        "configure the embedded services; with --connect they are flags of kvpr up");
  }
  split_endpoints(o.connect);
}

void start_workers(const BatchOptions& o, planner::Policy policy, Workers& w) {
  gateway::WorkerUpstreamOptions uo;
  uo.policy = policy;
  if (o.connect.empty()) {
    BackendFlags flags = o.backend;
    flags.device.batch = o.max_batch;
    w.embedded = std::make_unique<Embedded>(o.model, flags, policy, std::nullopt, o.capacity_bytes,
                                            !o.quiet, o.planner);
    worker::WorkerServiceOptions wo;
    wo.endpoint = "inproc://kvpr-batch-worker";
    wo.name = "embedded";
    wo.max_queue = std::max<std::size_t>(64, static_cast<std::size_t>(o.max_batch));
    wo.batching.max_batch = o.max_batch;
    wo.batching.engine.micro_batches = o.backend.device.micro_batches;
    wo.host_threads = o.host_threads;
    auto& e = *w.embedded;
    wo.corrector = e.corrector.get();
    w.service = std::make_unique<worker::WorkerService>(w.context, *e.model, *e.backend, *e.store,
                                                        *e.planner, wo);
    w.service->start();
    uo.endpoints = {w.service->endpoint()};
  } else {
    w.security = std::make_unique<net::Security>(
        w.context, net::SecurityOptions{o.keys, "client", false, false});
    uo.endpoints = split_endpoints(o.connect);
  }
  w.count = uo.endpoints.size();
  w.upstream = std::make_unique<gateway::WorkerUpstream>(w.context, uo);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    for (const auto& room : w.upstream->workers()) {
      if (room.alive) return;
    }
    if (Clock::now() > deadline) {
      raise(ErrorKind::disconnected, "no worker answered within 30 s",
            o.connect.empty() ? "" : str(" at ", o.connect));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

int batch_command(const BatchOptions& o) {
  if (o.max_new_tokens < 1) fail("--max-new-tokens must be at least 1, got ", o.max_new_tokens);
  if (o.max_batch < 1) fail("--max-batch must be at least 1, got ", o.max_batch);
  if (o.host_threads < 1) fail("--host-threads must be at least 1, got ", o.host_threads);
  if (o.on_bad_line != "skip" && o.on_bad_line != "fail") {
    fail("--on-bad-line must be skip or fail, got '", o.on_bad_line, "'");
  }
  if (std::filesystem::exists(o.output) && std::filesystem::exists(o.input) &&
      std::filesystem::equivalent(o.output, o.input)) {
    fail("--output is the --input file '", o.input, "'");
  }
  const planner::Policy policy = planner::parse_policy(o.policy);
  if (!o.connect.empty()) check_connect_flags(o);
  const ModelConfig c = load_model_config(std::filesystem::path(o.model) / "config.json");
  const std::unique_ptr<Tokenizer> tokenizer = try_load_tokenizer(o.model);

  BatchModel model;
  model.limits.vocab = c.vocab;
  model.limits.max_positions = c.max_positions;
  model.tokenizer = tokenizer.get();
  if (c.bos_token_id >= 0) model.bos = c.bos_token_id;
  model.default_max_tokens = o.max_new_tokens;
  const BatchInput input = read_batch_input(o.input, model);
  for (const auto& bad : input.bad) {
    std::fputs(str("kvpr batch: ", o.input, ":", bad.index + 1, ": ", bad.what, "\n").c_str(),
               stderr);
  }
  if (!input.bad.empty() && o.on_bad_line == "fail") {
    fail(input.bad.size(), " malformed input line(s) in '", o.input,
         "'; nothing was run (--on-bad-line fail)");
  }

  const std::set<std::int64_t> done = resume_output(o.output, input.lines);
  std::vector<BatchPrompt> todo;
  for (const auto& prompt : input.prompts) {
    if (done.count(prompt.index) == 0) todo.push_back(prompt);
  }
  if (!done.empty()) {  // even with --quiet: work is being skipped
    std::fprintf(stderr, "kvpr batch: resuming: %zu of %zu prompts already in %s\n", done.size(),
                 input.prompts.size(), o.output.c_str());
  }
  ResultWriter writer(o.output);
  Counters counters;
  auto start = Clock::now();  // generating starts once the workers answer
  double load_s = 0;
  bool interrupted = false;
  if (!todo.empty()) {
    SignalCounter signals;
    Workers workers;
    start_workers(o, policy, workers);
    load_s = std::chrono::duration<double>(Clock::now() - start).count();
    start = Clock::now();
    ProgressLine progress(counters, static_cast<std::int64_t>(todo.size()), !o.quiet);
    const auto wait_for_room =
        o.connect.empty() ? std::chrono::milliseconds(0) : std::chrono::milliseconds(30000);
    BatchRunner runner(*workers.upstream, tokenizer.get(), todo, writer, counters, wait_for_room);
    const auto threads =
        std::min<std::int64_t>(o.max_batch * static_cast<std::int64_t>(workers.count),
                               static_cast<std::int64_t>(todo.size()));
    try {
      runner.run(threads);
    } catch (...) {
      progress.finish();
      std::fputs(str("kvpr batch: stopped: ", counters.done.load() + done.size(), " of ",
                     input.prompts.size(), " prompts done; run the same command to resume\n")
                     .c_str(),
                 stderr);
      throw;
    }
    progress.finish();
    interrupted = batch_signals() > 0;
  }

  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const auto all_done = static_cast<std::int64_t>(done.size()) + counters.done.load();
  const auto tokens = counters.tokens.load();
  const double rate = wall > 0 ? static_cast<double>(tokens) / wall : 0;
  if (o.json) {
    json summary = {{"prompts", input.prompts.size()},
                    {"done", all_done},
                    {"run_now", counters.done.load()},
                    {"already_done", done.size()},
                    {"bad_lines", input.bad.size()},
                    {"failed", counters.failed.load()},
                    {"generated_tokens", tokens},
                    {"load_s", load_s},
                    {"wall_s", wall},
                    {"tokens_per_s", rate},
                    {"interrupted", interrupted}};
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::printf(
        "batch: %lld/%zu prompts done (%lld now, %zu before, %zu bad lines skipped, %lld "
        "refused), %lld tokens generated in %.2f s, %.1f tokens/s (workers up in %.2f s)\n",
        static_cast<long long>(all_done), input.prompts.size(),
        static_cast<long long>(counters.done.load()), done.size(), input.bad.size(),
        static_cast<long long>(counters.failed.load()), static_cast<long long>(tokens), wall, rate,
        load_s);
  }
  std::fflush(stdout);
  if (interrupted) {
    std::fprintf(stderr,
                 "kvpr batch: interrupted: %lld of %zu prompts done; run the same command to "
                 "resume\n",
                 static_cast<long long>(all_done), input.prompts.size());
    return 130;
  }
  if (counters.failed.load() > 0) {
    std::fprintf(stderr, "kvpr batch: %lld prompt(s) refused by the worker (see above)\n",
                 static_cast<long long>(counters.failed.load()));
    return 1;
  }
  return 0;
}

}  // namespace kvpr::cli
