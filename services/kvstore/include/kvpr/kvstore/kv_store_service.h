// The kvstore daemon as a service: it owns the host memory that holds every client's KV cache and
// activations, and manages it over ZeroMQ (schemas/kvstore.capnp) while clients move the rows
// themselves over UCX.
//
// Memory: one arena of capacity_bytes allocated by UCX (ucp_mem_map with ALLOCATE), so a client on
// the same host maps it zero-copy (ucp_rkey_ptr) and one elsewhere reads and writes it with
// ucp_get/ucp_put. The arena is a PagePool of page_bytes pages; each registered client gets a
// LocalKvStore view over it with its own shape, whose block_tokens the service picks so that one
// block of one layer fits a page. Live data is never evicted: a reserve that does not fit is
// answered `overloaded` with the numbers.
//
// Clients: register -> a client handle and a lease; any request renews the lease; a client whose
// lease runs out loses every sequence (the memory returns to the pool, counted as a lease expiry);
// unregister does the same at once. The daemon opens no UCX endpoint back to a client (the
// client's address in `register` is not needed): UCX wires the reply path of gets and puts itself,
// as long as the progress thread runs.
//
// Ownership: client and sequence handles are random 128-bit capabilities (getrandom), never
// counters. Every request is checked: its client handle must name a live client registered by
// the same principal (the name of the peer's CURVE key, empty on a socket without
// authentication), and every sequence it names must belong to that client. Anything else is
// answered `permissionDenied` with one message per operation whether the handle is unknown or
// someone else's, and counted in kvpr_rejected_messages_total{reason="permission_denied"}.
//
// Memory a client can make the daemon hold is bounded: its blocks (whole pages of the arena),
// its sequences and its metadata (the client record and every sequence's block tables) by the
// per-client quotas below, and the metadata of all clients together is counted against
// capacity_bytes (it holds pages of the pool that no sequence can then have). A request past a
// quota is answered `overloaded` (reason "quota"); one past the capacity `overloaded` as well,
// counted as an allocation failure.
//
// Threads: a router thread owns the listening socket, decodes and answers requests and expires
// leases; a progress thread drives the UCX worker so remote gets and puts complete (it sleeps in
// ucp_worker_wait between events). stop() stops taking requests, answers what was already
// received, stops both threads and returns. handle() is the whole request path without sockets
// (tests, fuzzing); it is serialized with the router thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <zmq.hpp>

namespace kvpr::net {
class Metrics;
}  // namespace kvpr::net

namespace kvpr::kvstore {

struct KvStoreServiceOptions {
  std::string endpoint = "tcp://127.0.0.1:0";  // port 0: a free port; endpoint() tells which
  std::uint64_t capacity_bytes = std::uint64_t{1} << 30;
  std::size_t page_bytes = std::size_t{256} << 10;
  std::chrono::milliseconds lease{10000};
  int metrics_port = -1;                   // 0: a free port; -1: collected but not served
  std::string metrics_host = "127.0.0.1";  // the address /metrics binds
  std::string name = "kvstore";

  // true: a request without an authenticated principal (a socket without CURVE) is refused
  // `permissionDenied` whatever it asks, so only authenticated clients learn the arena's address
  // and UCX remote key. false: every peer is served; principals, when the socket has them, are
  // still checked per client.
  bool require_principal = false;

  // Per-client quotas; 0: no limit but the capacity.
  std::uint64_t max_sequences_per_client = 16384;          // open sequences
  std::uint64_t max_metadata_bytes_per_client = 64 << 20;  // client record + block tables
  std::uint64_t max_block_bytes_per_client = 0;            // pages held, in bytes

  // The node's host-attention threads, shared by the registered clients (workers) in proportion
  // to what each asks for; each learns its share at registration and with every heartbeat.
  // 0: unmanaged (each uses what it asks for).
  std::uint32_t host_threads = 0;
};

struct KvStoreServiceStats {
  std::uint64_t capacity_bytes = 0;
  std::uint64_t used_bytes = 0;      // pages held by sequences
  std::uint64_t metadata_bytes = 0;  // client and sequence tables (pages held for them: rounded up)
  std::uint64_t sequences = 0;
  std::uint64_t clients = 0;
  std::uint64_t lookups = 0;  // wire locate requests answered
  std::uint64_t allocation_failures = 0;
  std::uint64_t lease_expiries = 0;
  std::uint64_t rejected_messages = 0;
  std::uint64_t requests = 0;
};

class KvStoreService {
 public:
  // Allocates and exports the arena and sets up metrics (throws kvpr::Error: `overloaded` when
  // the memory cannot be had, `failed` for bad options); listens only from start().
  KvStoreService(zmq::context_t& context, KvStoreServiceOptions options);
  ~KvStoreService();  // stop()s if running
  KvStoreService(const KvStoreService&) = delete;
  KvStoreService& operator=(const KvStoreService&) = delete;

  void start();
  void stop();

  // The bound endpoint (after start()), e.g. "tcp://127.0.0.1:41235".
  const std::string& endpoint() const;
  int metrics_port() const;  // -1 when not served
  const KvStoreServiceOptions& options() const;
  KvStoreServiceStats stats() const;
  net::Metrics& metrics();

  // The arena in this process (the memory clients map or reach through UCX).
  void* arena() const;
  std::size_t arena_bytes() const;

  // Decodes one request frame from `principal` (the authenticated name of the peer; empty when
  // the socket does not authenticate) and returns the encoded KvReply. Never throws: every bad
  // message gets an error reply (with the request id when it could be read) and counts in
  // kvpr_rejected_messages_total{reason}. The router thread calls it with Request::principal.
  zmq::message_t handle(const void* data, std::size_t size, std::string_view principal = {});

  struct Impl;  // defined in src/service_impl.h, private to the library

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpr::kvstore
