#include "kvpr/net/service.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvpr/common/error.h"

namespace kvpr::net {
namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) {
  g_stop.store(true);
}

}  // namespace

void install_stop_signals() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

bool stop_requested() {
  return g_stop.load();
}
void request_stop() {
  g_stop.store(true);
}

void write_ready_file(const std::string& path, const ServiceInfo& info) {
  nlohmann::json j{{"name", info.name},
                   {"role", info.role},
                   {"pid", static_cast<long>(getpid())},
                   {"endpoint", info.endpoint},
                   {"metrics_port", info.metrics_port}};
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump() << "\n";
    if (!out) fail("cannot write the ready file '", tmp, "'");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace kvpr::net
