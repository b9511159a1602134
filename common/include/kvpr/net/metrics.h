// Prometheus metrics of a service: a prometheus-cpp registry and the HTTP endpoint that serves it
// as /metrics, plus the helpers every service shares (latency buckets, the rejected-messages
// counter).
//
// The endpoint is cpp-httplib's server (what llama.cpp's server is built on), not prometheus-cpp's
// civetweb Exposer: civetweb starts its threads with a fixed 100 KiB stack, which cannot hold the
// static TLS of cuBLAS (~94 KiB) and OpenBLAS together, so in a worker linked with the CUDA backend
// it failed to start at all. httplib's pool threads are plain std::threads with the default stack
// (8 MiB here), which hold it.
//
// A slow or hostile client must not block a scrape: connections are served by a small pool, a
// connection that has not sent its request by the time a pool thread takes it up is dropped
// (scrapers send the request with the connection), a request stalled between bytes for longer than
// the read timeout is dropped, and every response closes its connection. A handful of clients
// trickling a byte faster than the read timeout can still hold the pool threads (httplib 0.11 has
// no per-request deadline): the endpoint binds 127.0.0.1 unless told otherwise for that reason.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <string_view>
#include <thread>

namespace httplib {
class Server;
}

namespace kvpr::net {

// Where /metrics is served: --metrics-listen HOST:PORT, or --metrics-port PORT on 127.0.0.1.
struct MetricsAddress {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port; < 0: not served
};

// Parses "HOST:PORT" ("[V6]:PORT" for IPv6; port 0: a free one). Raises Error(failed) naming the
// text when it is not of that form or the port is out of [0, 65535].
MetricsAddress parse_metrics_listen(std::string_view text);

class Metrics {
 public:
  // port 0: any free port; port < 0: metrics are collected but not served. Raises Error(failed)
  // naming the address when it cannot be bound (a bad host, a port in use).
  explicit Metrics(int port, const std::string& bind_host = "127.0.0.1");
  // Stops accepting, lets the pool finish the connections it holds (bounded by the timeouts) and
  // joins its threads.
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  int port() const { return port_; }  // -1 when not served

  // kvpr_rejected_messages_total{reason}: requests a service answered with an error because they
  // were malformed, unknown or out of range (reason: malformed, unknown_type, invalid, expired).
  prometheus::Counter& rejected(const std::string& reason);

 private:
  // Declared first so that it outlives the server whose handler reads it (TOOLCHAIN.md: the
  // reverse order races at exit).
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* rejected_ = nullptr;
  int port_ = -1;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;  // runs the accept loop; the pool's threads are the server's own
};

// Bucket bounds in seconds from 100 µs to ~100 s, for request and step latencies.
prometheus::Histogram::BucketBoundaries latency_buckets();

}  // namespace kvpr::net
