// `kvpr serve`: the embedded server — the OpenAI-compatible gateway, one worker (continuous
// batching), the host KV store and the planner in one process. The gateway reaches the worker
// over inproc:// exactly as a deployment's gateway reaches its workers over tcp://.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <zmq.hpp>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/gateway.h"
#include "kvpr/gateway/worker_upstream.h"
#include "kvpr/net/security.h"
#include "kvpr/net/service.h"
#include "kvpr/worker/worker_service.h"

namespace kvpr::cli {

namespace {

void wait_for_a_worker(const gateway::Upstream& upstream) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    for (const auto& w : upstream.workers()) {
      if (w.alive) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  raise(ErrorKind::disconnected, "the embedded worker did not answer within 30 s");
}

}  // namespace

int serve_command(const ServeOptions& o) {
  if (!net::is_loopback_endpoint(str("tcp://", o.host, ":0")) && o.api_key_file.empty() &&
      !o.insecure) {
    fail("refusing to serve HTTP on '", o.host,
         "' without API keys: pass --api-key-file FILE or --insecure");
  }
  if (o.port < 0 || o.port > 65535) fail("--port must be in [0, 65535], got ", o.port);
  const planner::Policy policy = planner::parse_policy(o.policy);
  Embedded e(o.model, o.backend, policy, std::nullopt, o.capacity_bytes, !o.quiet, o.planner);
  const auto tokenizer = load_tokenizer(o.model);
  zmq::context_t context;
  worker::WorkerServiceOptions wo;
  wo.endpoint = "inproc://kvpr-serve-worker";
  wo.name = "embedded";
  wo.model_name = o.served_name;
  wo.corrector = e.corrector.get();
  wo.max_queue = o.max_queue;
  wo.batching.max_batch = o.max_batch;
  wo.batching.max_prefill_tokens_per_step = o.max_prefill_tokens;
  wo.batching.admit = worker::parse_admit(o.admit);
  worker::WorkerService service(context, *e.model, *e.backend, *e.store, *e.planner, wo);
  service.start();
  gateway::WorkerUpstreamOptions uo;
  uo.endpoints = {service.endpoint()};
  uo.policy = policy;
  gateway::WorkerUpstream upstream(context, uo);
  wait_for_a_worker(upstream);

  gateway::GatewayOptions go;
  go.host = o.host;
  go.port = o.port;
  go.model_name = o.served_name;
  go.max_positions = e.checkpoint.config().max_positions;
  if (!o.api_key_file.empty()) go.api_keys = gateway::load_api_keys(o.api_key_file);
  go.tls_cert = o.tls_cert;
  go.tls_key = o.tls_key;
  go.chat_format = gateway::load_chat_format(o.model);
  go.also_serve = {&service.registry()};
  gateway::Gateway gw(go, upstream, *tokenizer);
  gw.start();
  const std::string url = str(o.tls_cert.empty() ? "http://" : "https://", o.host, ":", gw.port());
  std::printf("listening on %s (model %s)\n", url.c_str(), o.served_name.c_str());
  std::fflush(stdout);
  if (!o.ready_file.empty()) {
    const std::string tmp = o.ready_file + ".tmp";
    std::ofstream(tmp) << nlohmann::json{{"http", url}, {"pid", getpid()}}.dump() << "\n";
    std::filesystem::rename(tmp, o.ready_file);
  }
  net::install_stop_signals();
  while (!net::stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  gw.stop();
  service.stop();
  return 0;
}

}  // namespace kvpr::cli
