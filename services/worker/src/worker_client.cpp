#include "kvpr/worker/worker_client.h"

#include <algorithm>
#include <exception>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/net/rpc.h"
#include "planner_wire.h"
#include "worker_wire.h"

namespace kvpr::worker {

WorkerClient::WorkerClient(zmq::context_t& context, const std::string& endpoint,
                           std::chrono::milliseconds idle_timeout)
    : rpc_(std::make_unique<net::RpcClient>(context, endpoint, "worker " + endpoint)),
      endpoint_(endpoint),
      idle_timeout_(idle_timeout) {}

WorkerClient::~WorkerClient() {
  if (active_ == 0) return;
  try {
    stop(-1);                        // the request outlives nobody who wants it
  } catch (const std::exception&) {  // best effort: a dead worker has nothing to cancel
  }
}

void WorkerClient::stop(std::int64_t index) {
  if (active_ == 0) return;
  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<wire::WorkerRequest>();
  r.setId(net::next_request_id());
  auto c = r.initCancel();
  c.setRequest(active_);
  c.setIndex(index);
  // Connected, the cancel leaves at once; a peer that is gone has nothing to cancel, and a caller
  // reporting its failure must not wait on it.
  rpc_->send(message, std::chrono::milliseconds(100));
}

namespace {

void send_generate(net::RpcClient& rpc, std::uint64_t id, const RemoteGenerate& remote,
                   std::chrono::milliseconds timeout) {
  const GenerateRequest& request = remote.request;
  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<wire::WorkerRequest>();
  r.setId(id);
  r.setDeadlineUnixMs(remote.deadline_unix_ms);
  auto g = r.initGenerate();
  auto prompts = g.initPrompts(static_cast<unsigned>(request.prompts.size()));
  for (unsigned i = 0; i < request.prompts.size(); ++i) {
    const auto& p = request.prompts[i];
    auto ids = prompts.init(i, static_cast<unsigned>(p.size()));
    for (unsigned j = 0; j < p.size(); ++j) ids.set(j, p[j]);
  }
  g.setMaxNewTokens(request.max_new_tokens);
  g.setPolicy(planner::wire_adapter::encode_policy(remote.policy));
  g.setSplit(remote.split.value_or(-1));
  g.setHostSplit(remote.host_split.value_or(-1));
  g.setKeepLogits(request.keep_logits);
  g.setScorePrompt(request.score_prompt);
  wire_adapter::encode_sampling(remote.sampling, g.initSampling());
  rpc.send(message, timeout);
}

}  // namespace

GenerateResult WorkerClient::generate(const RemoteGenerate& remote,
                                      const StreamCallbacks& callbacks) {
  const GenerateRequest& request = remote.request;
  if (request.prompts.empty()) fail("generate: no prompts");
  if (active_ != 0) stop(-1);  // the last request ended in an error: it is not wanted any more
  const std::uint64_t id = net::next_request_id();
  send_generate(*rpc_, id, remote, idle_timeout_);
  active_ = id;
  GenerateResult result;
  result.sequences.resize(request.prompts.size());
  const std::size_t b = request.prompts.size();
  std::vector<bool> ended(b, false);
  std::vector<float> logits;
  for (;;) {
    std::unique_ptr<net::Frame> frame;
    try {
      frame = rpc_->receive(idle_timeout_);
    } catch (const Error&) {
      active_ = 0;  // the connection closed: the worker and the request died with it
      throw;
    }
    if (!frame) {
      raise(ErrorKind::disconnected, rpc_->peer(), ": no event for ", idle_timeout_.count(),
            " ms (request ", id, ")");
    }
    bool done = false;
    net::decode_guard([&] {
      const auto event = frame->root<wire::WorkerEvent>();
      if (event.getId() != id) return;  // a late event of an abandoned request
      switch (event.which()) {
        case wire::WorkerEvent::ERROR:
          active_ = 0;
          net::throw_error(event.getError(), rpc_->peer());
        case wire::WorkerEvent::ACCEPTED:
          if (callbacks.on_queued)
            callbacks.on_queued(static_cast<std::int64_t>(event.getAccepted()));
          return;
        case wire::WorkerEvent::QUEUED:
          if (callbacks.on_queued)
            callbacks.on_queued(static_cast<std::int64_t>(event.getQueued()));
          return;
        case wire::WorkerEvent::WORKING:
        case wire::WorkerEvent::STATS:
          return;
        case wire::WorkerEvent::TOKENS: {
          const JobStep step = wire_adapter::decode_step(event.getTokens(), request.prompts,
                                                         request.keep_logits, logits);
          const std::size_t vocab = step.tokens.empty() ? 0 : logits.size() / step.tokens.size();
          for (std::size_t i = 0; i < step.tokens.size(); ++i) {
            const auto index = static_cast<std::size_t>(step.tokens[i].index);
            if (ended[index]) fail(rpc_->peer(), ": a token for finished sequence ", index);
            auto& seq = result.sequences[index];
            seq.tokens.push_back(step.tokens[i].token);
            if (request.keep_logits) {
              const float* row = logits.data() + i * vocab;
              seq.logits.insert(seq.logits.end(), row, row + vocab);
            }
          }
          for (const auto& [index, why] : step.finished) {
            ended[static_cast<std::size_t>(index)] = true;
            result.sequences[static_cast<std::size_t>(index)].finish = why;
          }
          if (callbacks.on_step) callbacks.on_step(step);
          return;
        }
        case wire::WorkerEvent::DONE: {
          std::vector<std::int64_t> s_max;
          for (const auto& p : request.prompts) {
            s_max.push_back(static_cast<std::int64_t>(p.size()) + request.max_new_tokens);
          }
          wire_adapter::get_summary(event.getDone(), s_max, result);
          last_worker_ = event.getDone().getWorker().cStr();
          done = true;
          return;
        }
      }
      fail(rpc_->peer(), ": unknown event type ", static_cast<int>(event.which()));
    });
    if (done) break;
  }
  active_ = 0;
  for (std::size_t i = 0; i < b; ++i) {
    const auto n = static_cast<std::int64_t>(result.sequences[i].tokens.size());
    if (!ended[i] || n > request.max_new_tokens) {
      fail(rpc_->peer(), ": sequence ", i, " ended with ", n, " tokens (at most ",
           request.max_new_tokens, ")", ended[i] ? "" : " without a finish");
    }
  }
  return result;
}

WorkerStatus WorkerClient::status() {
  const std::uint64_t id = net::next_request_id();
  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<wire::WorkerRequest>();
  r.setId(id);
  r.setStats();
  auto frame = rpc_->call<wire::WorkerEvent>(message, id, idle_timeout_);
  WorkerStatus status;
  net::decode_guard([&] {
    const auto event = frame->root<wire::WorkerEvent>();
    if (event.isError()) net::throw_error(event.getError(), rpc_->peer());
    if (!event.isStats()) fail(rpc_->peer(), ": stats request answered with another event");
    const auto s = event.getStats();
    status = {s.getName().cStr(),      s.getQueued(),           s.getRunning(),
              s.getCompleted(),        s.getFailed(),           s.getRejectedMessages(),
              s.getRunningSequences(), s.getWaitingSequences(), s.getMaxBatch(),
              s.getMaxQueue(),         s.getKvFreeBytes(),      s.getPreemptions(),
              s.getCancellations()};
  });
  return status;
}

GenerateResult generate_spread(const std::vector<WorkerClient*>& workers,
                               const RemoteGenerate& request) {
  if (workers.empty()) fail("generate: no workers to send the batch to");
  const std::size_t n = std::min(workers.size(), request.request.prompts.size());
  if (n == 1) return workers[0]->generate(request);
  std::vector<RemoteGenerate> parts(n, request);
  std::vector<std::vector<std::size_t>> index(n);
  for (auto& part : parts) part.request.prompts.clear();
  for (std::size_t i = 0; i < request.request.prompts.size(); ++i) {
    parts[i % n].request.prompts.push_back(request.request.prompts[i]);
    index[i % n].push_back(i);
  }
  std::vector<GenerateResult> results(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (std::size_t w = 0; w < n; ++w) {
    threads.emplace_back([&, w] {
      try {
        results[w] = workers[w]->generate(parts[w]);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  GenerateResult merged;
  merged.sequences.resize(request.request.prompts.size());
  for (std::size_t w = 0; w < n; ++w) {
    GenerateResult& r = results[w];
    for (std::size_t j = 0; j < index[w].size(); ++j) {
      merged.sequences[index[w][j]] = std::move(r.sequences[j]);
    }
    merged.prefill_s = std::max(merged.prefill_s, r.prefill_s);
    if (merged.step_s.size() < r.step_s.size()) merged.step_s.resize(r.step_s.size());
    for (std::size_t k = 0; k < r.step_s.size(); ++k) {
      merged.step_s[k] = std::max(merged.step_s[k], r.step_s[k]);
    }
    if (r.decode_times.total >= merged.decode_times.total) merged.decode_times = r.decode_times;
    merged.recompute_tokens += r.recompute_tokens;
    merged.transfer_tokens += r.transfer_tokens;
    merged.h2d_bytes += r.h2d_bytes;
    merged.d2h_bytes += r.d2h_bytes;
    merged.last_plan = r.last_plan;
    merged.total_s = std::max(merged.total_s, r.total_s);
  }
  return merged;
}

}  // namespace kvpr::worker
