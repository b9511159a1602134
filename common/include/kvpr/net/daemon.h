// What every service daemon's main() does alike: the shared flags (authentication, the metrics
// address, the ready file, the log level), the start (parse, log, metrics address) and the last
// word of a failure. Each daemon adds its own flags and runs its own serve().
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

#include "kvpr/net/security.h"

namespace kvpr::net {

struct DaemonFlags {
  SecurityOptions security;
  std::string ready_file;
  std::string log_level;
  int metrics_port = 0;  // on metrics_host: 0 picks a free port, -1 serves no /metrics
  std::string metrics_host = "127.0.0.1";
  std::string metrics_listen;  // HOST:PORT; replaces the two above when given
};

// --keys, --insecure, --ready-file (its help: "Write READY_HOLDS here once ready"),
// --log-level and, with `metrics`, --metrics-port and --metrics-listen.
void add_daemon_flags(CLI::App& app, DaemonFlags& flags, const std::string& ready_holds,
                      bool metrics = true);

// Parses the command line, starts the log as `program` and resolves --metrics-listen. Returns
// the exit code when main() is to return at once (--help: 0; a bad flag: 1, after one line
// "PROGRAM: reason" on stderr), nullopt to go on.
std::optional<int> start_daemon(CLI::App& app, int argc, char** argv, const char* program,
                                DaemonFlags& flags);

// Installs the stop signals and returns serve()'s exit code. A failure is the process's last
// word: one line "PROGRAM: KIND: reason" on stderr, and exit code 1.
int run_daemon(const char* program, const std::function<int()>& serve);

}  // namespace kvpr::net
