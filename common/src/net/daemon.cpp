// The daemons' shared front (daemon.h).
#include "kvpr/net/daemon.h"

#include <algorithm>
#include <cstdio>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/security_flags.h"
#include "kvpr/net/service.h"

namespace kvpr::net {

namespace {

// One line on stderr, whatever the message holds (CLI11's may span several).
void say(const char* program, const std::string& kind, std::string message) {
  std::replace_if(
      message.begin(), message.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  if (kind.empty()) {
    std::fprintf(stderr, "%s: %s\n", program, message.c_str());
  } else {
    std::fprintf(stderr, "%s: %s: %s\n", program, kind.c_str(), message.c_str());
  }
}

}  // namespace

void add_daemon_flags(CLI::App& app, DaemonFlags& flags, const std::string& ready_holds,
                      bool metrics) {
  add_security_flags(app, flags.security);
  if (metrics) {
    auto* port = app.add_option("--metrics-port", flags.metrics_port,
                                "Prometheus /metrics port on 127.0.0.1: 0 picks a free one, -1 "
                                "serves none")
                     ->capture_default_str()
                     ->check(CLI::Range(-1, 65535));
    app.add_option("--metrics-listen", flags.metrics_listen,
                   "Serve /metrics on HOST:PORT instead (e.g. 0.0.0.0:9500 for a Prometheus on "
                   "another host)")
        ->excludes(port);
  }
  app.add_option("--ready-file", flags.ready_file, "Write " + ready_holds + " here once ready");
  app.add_option(
      "--log-level", flags.log_level,
      "trace, debug, info, warn, error, critical or off (default: $KVPR_LOG_LEVEL, info)");
}

std::optional<int> start_daemon(CLI::App& app, int argc, char** argv, const char* program,
                                DaemonFlags& flags) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    say(program, "", e.what());
    return 1;
  }
  try {
    log::init(program, flags.log_level);
    if (!flags.metrics_listen.empty()) {
      const MetricsAddress address = parse_metrics_listen(flags.metrics_listen);
      flags.metrics_port = address.port;
      flags.metrics_host = address.host;
    }
  } catch (const Error& e) {
    say(program, "", e.what());
    return 1;
  }
  return std::nullopt;
}

int run_daemon(const char* program, const std::function<int()>& serve) {
  try {
    install_stop_signals();
    return serve();
  } catch (const Error& e) {
    say(program, std::string(to_string(e.kind())), e.what());
  } catch (const std::exception& e) {
    say(program, "failed", e.what());
  }
  return 1;
}

}  // namespace kvpr::net
