// What every service shares: the serve-and-drain loop of its router thread, stopping on
// SIGTERM/SIGINT (a flag the service loops poll; they drain in-flight work before they return) and
// the ready file that tells a launcher where a service listens once it does.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/net/rpc.h"

namespace kvpr::net {

// What a service's router thread does, for serve() below. Every function runs on that thread.
struct ServeLoop {
  std::string name;  // for the log line of a socket error
  // Answers one request (request.malformed set: frames that form no request). Must not throw
  // for bad input: a bad request gets an error reply. An empty message sends no reply (a
  // one-way request such as a cancel).
  std::function<zmq::message_t(Router::Request& request)> answer;
  // Runs after every wake-up, before the request (if any) is answered: lease checks, forwarding
  // events, keep-alives. Optional.
  std::function<void()> tick;
  // True once the service stops taking new work: serve() then answers what has already arrived
  // (tick included) and returns.
  std::function<bool()> stopping;
  std::chrono::milliseconds poll{50};  // wake-up interval while idle
  // More sockets whose input wakes the loop (tick reads them), e.g. an inproc event pipe.
  std::vector<zmq::socket_ref> also_wake;
};

// The serve-and-drain loop: wait for a request (or `poll`), tick, answer it; once stopping()
// holds, drain (answer every request already received) and return. A ZeroMQ error is logged and
// serving goes on; while draining it ends the loop.
void serve(Router& router, const ServeLoop& loop);

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
