// `kvpr run`: prompts in, greedy tokens out, through the embedded services.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/common/npy.h"
#include "kvpr/common/tokenizer.h"
#include "kvpr/net/security.h"
#include "kvpr/worker/generator.h"
#include "kvpr/worker/worker_client.h"
#include "kvpr/worker/worker_service.h"
#include "report.h"

namespace kvpr::cli {
namespace {

std::vector<std::int32_t> parse_tokens(const std::string& list, std::int64_t vocab) {
  std::vector<std::int32_t> ids;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const auto comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    std::int64_t id = -1;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size()) {
      fail("--prompt-tokens: '", item, "' is not a token id (in '", list, "')");
    }
    if (id < 0 || id >= vocab)
      fail("--prompt-tokens: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
    ids.push_back(static_cast<std::int32_t>(id));
    pos = comma + 1;
  }
  return ids;
}

// The embedded deployment: the worker service runs in this process on the in-process store and
// planner, and this command talks to it over inproc:// exactly as it talks to a remote worker.
worker::GenerateResult run_embedded(const RunOptions& options, const worker::RemoteGenerate& work,
                                    const worker::StreamCallbacks& on_step) {
  if (options.host_threads < 1)
    fail("--host-threads must be at least 1, got ", options.host_threads);
  BackendFlags flags = options.backend;
  flags.device.batch = static_cast<std::int64_t>(work.request.prompts.size());
  Embedded e(options.model, flags, work.policy, work.split, options.capacity_bytes, !options.quiet,
             options.planner);
  zmq::context_t context;
  worker::WorkerServiceOptions service_options;
  service_options.endpoint = "inproc://kvpr-embedded-worker";
  service_options.name = "embedded";
  service_options.trace_path = options.trace;
  service_options.corrector = e.corrector.get();
  service_options.host_threads = options.host_threads;
  service_options.batching.engine.micro_batches = flags.device.micro_batches;
  worker::WorkerService service(context, *e.model, *e.backend, *e.store, *e.planner,
                                service_options);
  service.start();
  worker::WorkerClient client(context, service.endpoint(), std::chrono::hours(24));
  auto result = client.generate(work, on_step);
  service.stop();
  return result;
}

// The worker with the most free batch slots (then free KV bytes) among those that answer.
worker::WorkerClient& least_loaded(const std::vector<worker::WorkerClient*>& workers) {
  worker::WorkerClient* best = nullptr;
  double best_room = 0;
  std::uint64_t best_free = 0;
  for (auto* w : workers) {
    try {
      const auto st = w->status();
      const double room = static_cast<double>(st.max_batch) -
                          static_cast<double>(st.running_sequences + st.waiting_sequences);
      if (best == nullptr || room > best_room ||
          (room == best_room && st.kv_free_bytes > best_free)) {
        best = w;
        best_room = room;
        best_free = st.kv_free_bytes;
      }
    } catch (const Error&) {  // a silent worker is passed over
    }
  }
  if (best == nullptr) raise(ErrorKind::disconnected, "--connect: no worker answered");
  return *best;
}

worker::GenerateResult run_connected(const RunOptions& options, const worker::RemoteGenerate& work,
                                     const worker::StreamCallbacks& on_step) {
  const BackendFlags defaults;
  if (options.backend.backend != defaults.backend ||
      options.backend.emulate_link_gbps != defaults.emulate_link_gbps ||
      options.backend.emulate_link_latency_us != defaults.emulate_link_latency_us ||
      options.backend.threads != defaults.threads || options.planner != "nominal") {
    fail(
        "--backend, --emulate-link-*, --threads and --planner configure the embedded services; "
        "with --connect they are flags of kvpr-worker");
  }
  std::vector<std::string> endpoints;
  for (std::size_t pos = 0; pos <= options.connect.size();) {
    const auto comma = std::min(options.connect.find(',', pos), options.connect.size());
    const std::string endpoint = options.connect.substr(pos, comma - pos);
    if (endpoint.find("://") == std::string::npos) {
      fail("--connect: '", endpoint, "' is not an endpoint such as tcp://127.0.0.1:5557");
    }
    endpoints.push_back(endpoint);
    pos = comma + 1;
  }
  if (options.timeout_s <= 0) fail("--timeout must be positive, got ", options.timeout_s);
  if (!options.trace.empty()) {
    fail("--trace records the embedded run; a deployment's workers take kvpr-worker --trace FILE");
  }
  zmq::context_t context;
  // The deployment's keys (kvpr up's RUN/keys): this process is its "client".
  net::Security security(context, {options.keys, "client", false, false});
  const auto idle = std::chrono::milliseconds(static_cast<std::int64_t>(options.timeout_s * 1e3));
  std::vector<std::unique_ptr<worker::WorkerClient>> clients;
  std::vector<worker::WorkerClient*> workers;
  for (const auto& endpoint : endpoints) {
    clients.push_back(std::make_unique<worker::WorkerClient>(context, endpoint, idle));
    workers.push_back(clients.back().get());
  }
  if (workers.size() == 1) return workers[0]->generate(work, on_step);
  if (work.request.prompts.size() == 1) return least_loaded(workers).generate(work, on_step);
  return worker::generate_spread(workers, work);
}

}  // namespace

int run_command(const RunOptions& options) {
  if (options.prompts.empty() && options.prompt_tokens.empty()) {
    fail("kvpr run needs --prompt TEXT or --prompt-tokens IDS");
  }
  if (options.max_new_tokens < 1)
    fail("--max-new-tokens must be at least 1, got ", options.max_new_tokens);
  worker::RemoteGenerate work;
  work.policy = planner::parse_policy(options.policy);
  const SplitRequest split = parse_split_request(options.split);
  work.split = split.l;
  work.host_split = split.m;
  const ModelConfig c = load_model_config(std::filesystem::path(options.model) / "config.json");

  std::unique_ptr<Tokenizer> tokenizer;
  worker::GenerateRequest& request = work.request;
  request.max_new_tokens = options.max_new_tokens;
  request.keep_logits = !options.logits_out.empty();
  work.sampling.ignore_eos = true;  // exactly --max-new-tokens tokens, as the CLI contract says
  if (!options.prompts.empty()) {
    tokenizer = load_tokenizer(options.model);
    for (const auto& text : options.prompts) {
      std::vector<std::int32_t> ids;
      if (c.bos_token_id >= 0) ids.push_back(c.bos_token_id);
      for (auto id : tokenizer->encode(text)) ids.push_back(id);
      request.prompts.push_back(std::move(ids));
    }
  } else {
    for (const auto& list : options.prompt_tokens)
      request.prompts.push_back(parse_tokens(list, c.vocab));
    if (auto loaded = try_load_tokenizer(options.model)) tokenizer = std::move(loaded);
  }

  Progress progress("generating", static_cast<std::uint64_t>(options.max_new_tokens - 1),
                    !options.quiet);
  std::uint64_t steps = 0;
  worker::StreamCallbacks on_step;
  on_step.on_step = [&](const worker::JobStep& step) {
    if (!step.tokens.empty()) progress.update(steps++);
  };
  const auto result = options.connect.empty() ? run_embedded(options, work, on_step)
                                              : run_connected(options, work, on_step);
  const std::vector<std::int64_t>& host_split = result.last_plan.m;  // as executed
  progress.finish();

  if (!options.logits_out.empty()) {
    std::vector<float> all;
    for (const auto& seq : result.sequences)
      all.insert(all.end(), seq.logits.begin(), seq.logits.end());
    std::vector<std::int64_t> shape{options.max_new_tokens, c.vocab};
    if (result.sequences.size() > 1)
      shape.insert(shape.begin(), static_cast<std::int64_t>(result.sequences.size()));
    write_npy_f32(options.logits_out, shape, all.data());
  }
  RunReport report{options.policy, options.split, request, result, tokenizer.get(), host_split};
  if (options.json) {
    std::printf("%s\n", report_json(report).dump().c_str());
  } else {
    print_report(report);
  }
  return 0;
}

}  // namespace kvpr::cli
