// kvpr-gateway: the HTTP front door as a process. Loads the checkpoint's tokenizer, config and
// chat template (no weights), routes OpenAI-compatible requests to the workers given with
// --worker, and serves until SIGTERM, then drains its streams. main() parses and wires.
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <thread>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/common/model_config.h"
#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/gateway.h"
#include "kvpr/gateway/worker_upstream.h"
#include "kvpr/net/daemon.h"
#include "kvpr/net/service.h"

namespace {

struct Flags {
  std::string model;
  std::string served_name;
  std::vector<std::string> workers;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key_file;
  std::string tls_cert;
  std::string tls_key;
  std::string policy = "kvpr";
  std::string name = "gateway";
  std::size_t threads = 64;
  int dead_after_ms = 2000;
  int request_timeout_s = 600;
  kvpr::net::DaemonFlags daemon;  // its /metrics is on the HTTP port: no metrics flags
};

int serve(const Flags& f) {
  using namespace kvpr;
  if (f.workers.empty()) fail("--worker: give at least one worker endpoint");
  if (f.port < 0 || f.port > 65535) fail("--port must be in [0, 65535], got ", f.port);
  if (f.dead_after_ms < 100) fail("--dead-after-ms must be at least 100, got ", f.dead_after_ms);
  const ModelConfig config = load_model_config(std::filesystem::path(f.model) / "config.json");
  const auto tokenizer = load_tokenizer(f.model);
  if (!net::is_loopback_endpoint(str("tcp://", f.host, ":0")) && f.api_key_file.empty() &&
      !f.daemon.security.insecure) {
    fail("refusing to serve HTTP on '", f.host,
         "' without API keys: pass --api-key-file FILE or --insecure");
  }
  zmq::context_t context;
  net::SecurityOptions security_options = f.daemon.security;
  security_options.name = f.name;
  security_options.listens = false;  // the gateway connects to workers; its HTTP side has API keys
  net::Security security(context, security_options);
  gateway::WorkerUpstreamOptions uo;
  uo.endpoints = f.workers;
  uo.policy = planner::parse_policy(f.policy);
  uo.dead_after = std::chrono::milliseconds(f.dead_after_ms);
  uo.poll = uo.dead_after / 8;
  gateway::WorkerUpstream upstream(context, uo);

  gateway::GatewayOptions go;
  go.host = f.host;
  go.port = f.port;
  go.model_name = f.served_name.empty()
                      ? std::filesystem::weakly_canonical(f.model).filename().string()
                      : f.served_name;
  go.max_positions = config.max_positions;
  go.threads = f.threads;
  if (f.request_timeout_s < 0) fail("--request-timeout must be >= 0, got ", f.request_timeout_s);
  go.request_timeout = std::chrono::seconds(f.request_timeout_s);
  if (!f.api_key_file.empty()) go.api_keys = gateway::load_api_keys(f.api_key_file);
  go.tls_cert = f.tls_cert;
  go.tls_key = f.tls_key;
  go.chat_format = gateway::load_chat_format(f.model);
  gateway::Gateway gw(go, upstream, *tokenizer);
  gw.start();
  const std::string url = str(f.tls_cert.empty() ? "http://" : "https://", f.host, ":", gw.port());
  log::info(f.name, ": serving '", go.model_name, "' on ", url, " over ", f.workers.size(),
            " worker(s)");
  if (!f.daemon.ready_file.empty()) {
    // The HTTP port serves /metrics too.
    net::write_ready_file(f.daemon.ready_file, {f.name, "gateway", url, gw.port()});
  }
  while (!net::stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  log::info(f.name, ": stopping; finishing open streams");
  gw.stop();
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"kvpr-gateway: OpenAI-compatible HTTP server in front of kvpr workers"};
  app.add_option("--model", f.model, "Checkpoint directory (its tokenizer, config, chat template)")
      ->required();
  app.add_option("--served-model-name", f.served_name,
                 "The model name clients use (default: the checkpoint folder's name)");
  app.add_option("--worker", f.workers, "A worker's ZeroMQ endpoint; repeat for each")->required();
  app.add_option("--host", f.host, "Address to listen on");
  app.add_option("--port", f.port, "HTTP port (0: a free one)");
  app.add_option("--api-key-file", f.api_key_file,
                 "Accept only these API keys (one per line; Authorization: Bearer KEY)");
  app.add_option("--tls-cert", f.tls_cert, "Serve HTTPS with this PEM certificate (chain)");
  app.add_option("--tls-key", f.tls_key, "The PEM private key of --tls-cert");
  app.add_option("--policy", f.policy, "KV policy asked of the workers");
  app.add_option("--threads", f.threads, "HTTP requests served at once (a stream holds one)");
  app.add_option("--dead-after-ms", f.dead_after_ms,
                 "A worker silent this long is passed over and its streams end with an error");
  app.add_option("--request-timeout", f.request_timeout_s,
                 "Seconds a request may take before its worker ends it (0: no limit)");
  app.add_option("--name", f.name, "Name in logs (and its key: KEYS/NAME.key)");
  kvpr::net::add_daemon_flags(app, f.daemon, "{endpoint, metrics_port, pid}", false);
  if (const auto code = kvpr::net::start_daemon(app, argc, argv, "kvpr-gateway", f.daemon)) {
    return *code;
  }
  return kvpr::net::run_daemon("kvpr-gateway", [&] { return serve(f); });
}
