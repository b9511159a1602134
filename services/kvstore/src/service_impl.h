// KvStoreService's state, shared by its lifecycle (kv_store_service.cpp: threads, leases,
// metrics) and its wire adapter (service_handle.cpp: decode, execute, encode). Private.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "capability.h"
#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/kvstore/page_pool.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "ucx.h"

namespace kvpr::kvstore {

struct ServiceInstruments {
  explicit ServiceInstruments(prometheus::Registry& registry);

  prometheus::Gauge& capacity_bytes;
  prometheus::Gauge& used_bytes;
  prometheus::Gauge& metadata_bytes;
  prometheus::Gauge& sequences;
  prometheus::Gauge& clients;
  prometheus::Counter& lookups;
  prometheus::Counter& allocation_failures;
  prometheus::Counter& lease_expiries;
  prometheus::Counter& evictions;  // stays 0: live data is never dropped
  prometheus::Family<prometheus::Counter>& requests;
};

struct KvStoreService::Impl {
  Impl(zmq::context_t& context, KvStoreServiceOptions options);
  ~Impl();

  // Wire adapter (service_handle.cpp). Callers hold no lock; handle() takes mutex.
  zmq::message_t handle(const void* data, std::size_t size, std::string_view principal);
  zmq::message_t error_reply(std::uint64_t id, const Error& error);

  // Lifecycle (kv_store_service.cpp).
  void route();
  void progress();
  void expire_leases();                      // takes mutex
  void refresh_gauges_locked();              // mutex held
  KvStoreServiceStats stats_locked() const;  // mutex held
  void reject(const std::string& reason);

  struct Client {
    std::string name;
    std::string principal;                  // who registered it: the only one who may use it
    std::unique_ptr<LocalKvStore> store;    // a view over pool
    std::map<Capability, SeqId> sequences;  // handle on the wire -> id in store
    std::uint64_t metadata_bytes = 0;       // its record and its sequences' tables
    net::Clock::time_point lease_end;
    std::uint32_t host_threads = 0;  // host-attention threads it asked for
  };
  // A client's share of options.host_threads: what it asked for while the asks fit the budget,
  // else its proportional part (at least 1). Mutex held.
  std::uint32_t host_share_locked(const Client& client) const;
  using Clients = std::map<Capability, Client>;

  // Ownership and quotas (service_clients.cpp), mutex held. `op` names the request in refusals.
  // The client of `handle` if `principal` registered it, else permission_denied (the same
  // message when there is no such client).
  Client& client_locked(Capability handle, std::string_view principal, std::string_view op);
  // The id in client.store of a sequence of this client, else permission_denied.
  SeqId sequence_locked(const Client& client, Capability seq, std::string_view op) const;
  Capability add_client_locked(Client client);  // charges its record against the quotas
  void erase_client_locked(Clients::iterator it);
  Capability open_locked(Client& client);  // QuotaExceeded / overloaded when it does not fit
  void free_locked(Client& client, Capability seq, std::string_view op);
  // Bytes of the tables of one sequence of this shape (counted at open).
  static std::uint64_t sequence_metadata_bytes(const StoreShape& shape);
  // Adds (or, negative, returns) metadata bytes of one client, holding pool pages to match:
  // throws (QuotaExceeded, overloaded) before anything changes.
  void charge_locked(Client& client, std::int64_t bytes);
  std::uint64_t metadata_page_bytes_locked() const;  // pool bytes held for metadata

  zmq::context_t& context;
  KvStoreServiceOptions options;

  // UCX, in conversation order (destroyed in reverse).
  ucx::Context ucx_context;
  ucx::Worker worker;  // progressed by the progress thread only
  ucx::WorkerAddress worker_address;
  ucx::MemoryMap memory;
  ucx::RkeyBuffer rkey;
  std::unique_ptr<PagePool> pool;  // borrows memory

  std::unique_ptr<net::Metrics> metrics;
  std::unique_ptr<ServiceInstruments> instruments;

  mutable std::mutex mutex;  // guards everything below and the views' block tables
  Clients clients;
  std::uint64_t metadata_bytes = 0;         // over all clients
  std::vector<std::size_t> metadata_pages;  // pool pages held so metadata counts as capacity
  std::uint64_t lookups = 0;
  std::uint64_t lease_expiries = 0;
  std::uint64_t requests = 0;
  std::atomic<std::uint64_t> rejected{0};

  std::unique_ptr<net::Router> router;  // the router thread's, once started
  std::string endpoint;
  std::atomic<bool> stopping{false};
  std::atomic<bool> progress_stop{false};
  bool started = false;
  std::thread router_thread;
  std::thread progress_thread;
};

}  // namespace kvpr::kvstore
