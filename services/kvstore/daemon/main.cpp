// kvpr-kvstore: the kvstore daemon. Parses flags, constructs the service, wires signals and the
// ready file; everything else lives in KvStoreService.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"
#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/net/daemon.h"
#include "kvpr/net/service.h"

namespace {

// "8G", "512M", "64k", "1GiB", "4096": bytes (binary multiples).
std::uint64_t parse_bytes(const std::string& text, const std::string& flag) {
  std::size_t end = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &end);
  } catch (const std::exception&) {
    kvpr::fail(flag, ": '", text, "' is not a size (e.g. 8G, 512M, 4096)");
  }
  std::string suffix = text.substr(end);
  for (const char* tail : {"iB", "B", "i"}) {
    const std::string t = tail;
    if (suffix.size() > t.size() && suffix.ends_with(t)) {
      suffix.resize(suffix.size() - t.size());
      break;
    }
  }
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "k" || suffix == "K") {
    shift = 10;
  } else if (suffix == "m" || suffix == "M") {
    shift = 20;
  } else if (suffix == "g" || suffix == "G") {
    shift = 30;
  } else if (suffix == "t" || suffix == "T") {
    shift = 40;
  } else {
    kvpr::fail(flag, ": '", text, "' has an unknown unit (use K, M, G or T)");
  }
  if (shift > 0 && value > (~0ull >> shift)) kvpr::fail(flag, ": '", text, "' is too large");
  return static_cast<std::uint64_t>(value) << shift;
}

struct Flags {
  std::string listen = "tcp://127.0.0.1:5555";
  std::string capacity = "8G";
  std::string page_bytes = "256K";
  std::int64_t lease_ms = 10000;
  std::string name = "kvstore";
  std::uint64_t max_sequences = 16384;
  std::string max_metadata = "64M";
  std::string max_bytes = "0";
  std::uint32_t host_threads = std::max(1u, std::thread::hardware_concurrency());
  kvpr::net::DaemonFlags daemon;
};

int serve(const Flags& f) {
  kvpr::kvstore::KvStoreServiceOptions options;
  options.endpoint = f.listen;
  options.capacity_bytes = parse_bytes(f.capacity, "--capacity");
  options.page_bytes = static_cast<std::size_t>(parse_bytes(f.page_bytes, "--page-bytes"));
  if (f.lease_ms <= 0) kvpr::fail("--lease-ms: ", f.lease_ms, " is not positive");
  options.lease = std::chrono::milliseconds(f.lease_ms);
  options.metrics_port = f.daemon.metrics_port;
  options.metrics_host = f.daemon.metrics_host;
  options.name = f.name;
  options.max_sequences_per_client = f.max_sequences;
  options.max_metadata_bytes_per_client = parse_bytes(f.max_metadata, "--max-metadata-per-client");
  options.max_block_bytes_per_client = parse_bytes(f.max_bytes, "--max-bytes-per-client");
  options.host_threads = f.host_threads;

  zmq::context_t context;
  kvpr::net::SecurityOptions security_options = f.daemon.security;
  security_options.name = f.name;
  kvpr::net::Security security(context, security_options);
  // With keys, only authenticated peers are served at all (and learn the arena's UCX key).
  options.require_principal = security.authenticates();
  kvpr::kvstore::KvStoreService service(context, options);
  service.start();
  kvpr::log::info("kvpr-kvstore ", f.name, ": listening on ", service.endpoint(), ", capacity ",
                  service.arena_bytes(), " bytes (", options.page_bytes, "-byte pages), ",
                  service.metrics_port() >= 0
                      ? "metrics on port " + std::to_string(service.metrics_port())
                      : std::string("metrics off"));
  if (!f.daemon.ready_file.empty()) {
    kvpr::net::write_ready_file(f.daemon.ready_file,
                                {f.name, "kvstore", service.endpoint(), service.metrics_port()});
  }
  while (!kvpr::net::stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kvpr::log::info("kvpr-kvstore ", f.name, ": stopping");
  service.stop();
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"kvpr-kvstore: host memory for KV caches, shared over ZeroMQ + UCX"};
  Flags f;
  app.add_option("--host-threads", f.host_threads,
                 "The node's host-attention threads, shared by the registered workers in "
                 "proportion to what each asks for (0: unmanaged)")
      ->capture_default_str();
  app.add_option("--max-sequences-per-client", f.max_sequences,
                 "Open sequences one client may hold (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-metadata-per-client", f.max_metadata,
                 "Bytes of client and sequence tables one client may hold (counted against the "
                 "capacity; 0: no limit)")
      ->capture_default_str();
  app.add_option("--max-bytes-per-client", f.max_bytes,
                 "Bytes of KV pages one client may hold (0: no limit but the capacity)")
      ->capture_default_str();
  app.add_option("--listen", f.listen, "ZeroMQ endpoint to listen on (tcp://HOST:0: a free port)")
      ->capture_default_str();
  app.add_option("--capacity", f.capacity, "Bytes of host memory to serve (suffixes K, M, G, T)")
      ->capture_default_str();
  app.add_option("--page-bytes", f.page_bytes, "Page size of the arena (suffixes K, M)")
      ->capture_default_str();
  app.add_option("--lease-ms", f.lease_ms, "Client lease: no request for this long frees its data")
      ->capture_default_str();
  app.add_option("--name", f.name, "Service name (logs, ready file)")->capture_default_str();
  kvpr::net::add_daemon_flags(app, f.daemon, "{endpoint, metrics_port, pid}");
  if (const auto code = kvpr::net::start_daemon(app, argc, argv, "kvpr-kvstore", f.daemon)) {
    return *code;
  }
  return kvpr::net::run_daemon("kvpr-kvstore", [&] { return serve(f); });
}
