// `kvpr-planner`: one planner replica (PlannerService) as a process. main() parses flags,
// constructs and wires; SIGTERM/SIGINT stop it after the requests already received are answered.
// Every error that ends the process is one plain line on stderr ("kvpr-planner: KIND: ...") and
// exit code 1; while it serves, diagnostics go through the log (kvpr/common/log.h).
#include <CLI/CLI.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "kvpr/common/log.h"
#include "kvpr/net/daemon.h"
#include "kvpr/net/service.h"
#include "kvpr/planner/planner_service.h"

namespace {

int serve(kvpr::planner::PlannerServiceOptions options, const kvpr::net::DaemonFlags& flags) {
  options.metrics_port = flags.metrics_port;
  options.metrics_host = flags.metrics_host;
  zmq::context_t context;
  kvpr::net::SecurityOptions security_options = flags.security;
  security_options.name = options.name;
  kvpr::net::Security security(context, security_options);
  kvpr::planner::PlannerService service(context, options);
  service.start();
  if (!flags.ready_file.empty()) {
    kvpr::net::write_ready_file(
        flags.ready_file, {service.name(), "planner", service.endpoint(), service.metrics_port()});
  }
  kvpr::log::info(
      "kvpr-planner ", service.name(), " listening on ", service.endpoint(), " (metrics ",
      service.metrics_port() >= 0 ? std::to_string(service.metrics_port()) : "off", ")");
  while (!kvpr::net::stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kvpr::log::info("kvpr-planner ", service.name(), ": stopping");
  service.stop();
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"kvpr-planner: plans KV splits from workers' hardware profiles (one replica)"};
  kvpr::planner::PlannerServiceOptions options;
  options.endpoint = "tcp://127.0.0.1:5556";
  kvpr::net::DaemonFlags flags;
  app.add_option("--listen", options.endpoint,
                 "ZeroMQ endpoint to serve on (tcp://HOST:0 picks a free port)")
      ->capture_default_str();
  app.add_option("--name", options.name, "Replica name, in logs and the ready file")
      ->capture_default_str();
  app.add_option("--bucket", options.bucket, "Plans are cached per context bucket of N tokens")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  kvpr::net::add_daemon_flags(app, flags, "{name, role, pid, endpoint, metrics_port}");
  if (const auto code = kvpr::net::start_daemon(app, argc, argv, "kvpr-planner", flags)) {
    return *code;
  }
  return kvpr::net::run_daemon("kvpr-planner", [&] { return serve(options, flags); });
}
