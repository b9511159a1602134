// `kvpr-planner`: one planner replica (PlannerService) as a process. main() parses flags,
// constructs and wires; SIGTERM/SIGINT stop it after the requests already received are answered.
// Every error that ends the process is one plain line on stderr ("kvpr-planner: KIND: ...") and
// exit code 1; while it serves, diagnostics go through the log (kvpr/common/log.h).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/security_flags.h"
#include "kvpr/net/service.h"
#include "kvpr/planner/planner_service.h"

namespace {

void report(const std::string& kind, std::string message) {
  for (char& ch : message) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::fprintf(stderr, "kvpr-planner: %s: %s\n", kind.c_str(), message.c_str());
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"kvpr-planner: plans KV splits from workers' hardware profiles (one replica)"};
  kvpr::planner::PlannerServiceOptions options;
  options.endpoint = "tcp://127.0.0.1:5556";
  options.metrics_port = 0;
  std::string ready_file;
  std::string log_level;
  app.add_option("--listen", options.endpoint,
                 "ZeroMQ endpoint to serve on (tcp://HOST:0 picks a free port)")
      ->capture_default_str();
  std::string metrics_listen;
  kvpr::net::SecurityOptions security_options;
  kvpr::net::add_security_flags(app, security_options);
  auto* port_flag = app.add_option("--metrics-port", options.metrics_port,
                                   "Prometheus /metrics port on 127.0.0.1: 0 picks a free one, -1 "
                                   "serves none")
                        ->capture_default_str()
                        ->check(CLI::Range(-1, 65535));
  app.add_option(
         "--metrics-listen", metrics_listen,
         "Serve /metrics on HOST:PORT instead (e.g. 0.0.0.0:9500 for a Prometheus on another host)")
      ->excludes(port_flag);
  app.add_option("--name", options.name, "Replica name, in logs and the ready file")
      ->capture_default_str();
  app.add_option("--ready-file", ready_file,
                 "Write {name, role, pid, endpoint, metrics_port} here once listening");
  app.add_option("--bucket", options.bucket, "Plans are cached per context bucket of N tokens")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  app.add_option(
      "--log-level", log_level,
      "trace, debug, info, warn, error, critical or off (default: $KVPR_LOG_LEVEL, info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    report("bad arguments", e.what());
    return 1;
  }
  try {
    kvpr::log::init("kvpr-planner", log_level);
    if (!metrics_listen.empty()) {
      const kvpr::net::MetricsAddress address = kvpr::net::parse_metrics_listen(metrics_listen);
      options.metrics_port = address.port;
      options.metrics_host = address.host;
    }
  } catch (const kvpr::Error& e) {
    report("bad arguments", e.what());
    return 1;
  }

  try {
    kvpr::net::install_stop_signals();
    zmq::context_t context;
    security_options.name = options.name;
    kvpr::net::Security security(context, security_options);
    kvpr::planner::PlannerService service(context, options);
    service.start();
    if (!ready_file.empty()) {
      kvpr::net::write_ready_file(
          ready_file, {service.name(), "planner", service.endpoint(), service.metrics_port()});
    }
    kvpr::log::info(
        "kvpr-planner ", service.name(), " listening on ", service.endpoint(), " (metrics ",
        service.metrics_port() >= 0 ? std::to_string(service.metrics_port()) : "off", ")");
    while (!kvpr::net::stop_requested()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kvpr::log::info("kvpr-planner ", service.name(), ": stopping");
    service.stop();
    return 0;
  } catch (const kvpr::Error& e) {
    report(std::string(kvpr::to_string(e.kind())), e.what());
  } catch (const std::exception& e) {
    report("failed", e.what());
  }
  return 1;
}
