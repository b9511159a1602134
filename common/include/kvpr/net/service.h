// What every service process shares: stopping on SIGTERM/SIGINT (a flag the service loops poll;
// they drain in-flight work before they return) and the ready file that tells a launcher where a
// service listens once it does.
#pragma once

#include <string>

namespace kvpr::net {

// Installs handlers for SIGTERM and SIGINT that set the stop flag. Call once from main().
void install_stop_signals();
bool stop_requested();
void request_stop();

struct ServiceInfo {
  std::string name;
  std::string role;  // kvstore | planner | worker
  std::string endpoint;
  int metrics_port = -1;
};

// Writes {"name", "role", "pid", "endpoint", "metrics_port"} to path atomically (write, rename).
void write_ready_file(const std::string& path, const ServiceInfo& info);

}  // namespace kvpr::net
