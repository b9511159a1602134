#include "kvpr/net/service.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::net {
namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) {
  g_stop.store(true);
}

}  // namespace

void serve(Router& router, const ServeLoop& loop) {
  std::vector<zmq::pollitem_t> items;
  items.push_back(zmq::pollitem_t{router.socket().handle(), 0, ZMQ_POLLIN, 0});
  for (zmq::socket_ref socket : loop.also_wake) {
    items.push_back(zmq::pollitem_t{socket.handle(), 0, ZMQ_POLLIN, 0});
  }
  bool draining = false;
  for (;;) {
    try {
      draining = draining || loop.stopping();
      zmq::poll(items.data(), items.size(), draining ? std::chrono::milliseconds(0) : loop.poll);
      if (loop.tick) loop.tick();
      std::optional<Router::Request> request;
      if ((items[0].revents & ZMQ_POLLIN) != 0)
        request = router.receive(std::chrono::milliseconds(0));
      if (request) {
        zmq::message_t reply = loop.answer(*request);
        if (reply.size() > 0) router.send(request->peer, std::move(reply));
      } else if (draining) {
        return;
      }
    } catch (const std::exception& e) {
      log::error(loop.name, draining ? ": while draining: " : ": ", e.what());
      if (draining) return;
    }
  }
}

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
