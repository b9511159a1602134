// RemoteKvStore's state, shared by its control path (remote_kv_store.cpp: registration, the
// sequence calls, heartbeats) and its data path (remote_transfer.cpp: spans, UCX gets and puts,
// prefetches and the progress thread). Private to the library.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <compare>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "capability.h"
#include "kvpr/kvstore/remote_kv_store.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "ucx.h"

namespace kvpr::kvstore {
namespace remote {

// One registration with a daemon: its UCX endpoint, the arena's remote key and where spans point.
struct Session {
  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    if (mirror != nullptr) munmap(mirror, arena_bytes);
  }

  Capability client;                // the daemon's handle of this registration
  std::uint64_t arena_address = 0;  // in the daemon
  std::size_t arena_bytes = 0;
  ucx::Endpoint endpoint;
  ucx::RemoteKey rkey;        // destroyed before endpoint
  std::byte* base = nullptr;  // the mapped arena (zero copy) or the mirror
  bool zero_copy = false;
  void* mirror = nullptr;  // owned anonymous mapping (no shared memory to the daemon)
};

struct Sequence {
  Capability handle;  // the daemon's name of this sequence (the caller's SeqId is local)
  std::int64_t length = 0;
  std::int64_t reserved = 0;
  std::vector<std::vector<std::uint64_t>> blocks;  // [layer][block] -> arena offset
};

// Committed rows [t0, t1) of one part of one layer, fetched ahead by prefetch().
struct FetchKey {
  SeqId seq = 0;
  std::int64_t layer = 0;
  Part part = Part::act;
  std::int64_t t0 = 0;
  std::int64_t t1 = 0;
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads a defaulted <=> (LLVM #46235)
  auto operator<=>(const FetchKey&) const = default;
};

// The gets of one prefetch: those still in flight (owned here until they complete) and the first
// error of those that landed.
struct Fetch {
  std::vector<void*> pending;
  ucs_status_t status = UCS_OK;
};

// Prefetches not yet located; a prefetch that would pass this many completes and drops them all.
constexpr std::size_t kMaxFetches = 4096;
// How often the progress thread drives the worker while gets are in flight.
constexpr std::chrono::microseconds kProgressInterval{50};

}  // namespace remote

struct RemoteKvStore::Impl {
  using Session = remote::Session;
  using Sequence = remote::Sequence;
  using FetchKey = remote::FetchKey;
  using Fetch = remote::Fetch;

  Impl(zmq::context_t& context, const StoreShape& shape_in, RemoteKvStoreOptions options_in);

  using Build = std::function<void(wire::KvRequest::Builder)>;
  // One round trip: fills the request, waits for the reply. Throws disconnected (and marks the
  // registration lost) when no reply comes in time. Returns the reply frame, errors unchecked.
  std::unique_ptr<net::Frame> exchange(net::RpcClient& client, Capability client_handle,
                                       const Build& build, net::milliseconds timeout);
  // exchange() then throws the reply's error; a `disconnected` or `permissionDenied` one (the
  // daemon does not know this client or sequence: the lease ran out or it restarted) also marks
  // the registration lost, and the latter is thrown as `disconnected` (register again).
  std::unique_ptr<net::Frame> call_locked(const Build& build);

  void register_locked();
  void recover_locked();  // makes sure a live registration exists (open())
  Sequence& find_locked(SeqId seq);
  const Sequence& find_locked(SeqId seq) const;
  std::vector<HostSpan> spans_locked(const Sequence& s, std::int64_t layer, Part part,
                                     std::int64_t t0, std::int64_t t1) const;
  // Moves pieces of the mirror to (put, then one flush) or from (get) the same offsets of the
  // daemon's arena, and waits until all are done (no-shared-memory path).
  struct Piece {
    std::byte* data;
    std::size_t bytes;
  };
  void add_pieces(std::vector<Piece>& pieces, const Sequence& q, std::int64_t layer, Part part,
                  std::int64_t t0, std::int64_t t1) const;
  void transfer_locked(const std::vector<Piece>& pieces, bool put);
  // Posts the pieces' puts (and one flush) or gets; returns the requests in flight and sets
  // first_error when posting failed part-way (what was posted must still complete).
  std::vector<void*> post_locked(const std::vector<Piece>& pieces, bool put,
                                 ucs_status_t& first_error);
  // Waits up to options.timeout for pending (freeing each); throws disconnected on a timeout
  // (the endpoint is closed, which completes them) and the first error otherwise.
  void complete_locked(std::vector<void*>& pending, ucs_status_t first_error, bool put);
  // Frees the landed requests of every fetch (progress thread, after progressing the worker).
  void reap_locked();
  bool fetches_in_flight_locked() const;
  // Completes and drops the fetches of seq (all of them without one), errors ignored: before the
  // blocks they write into can change hands (free, truncate, re-register, destruction).
  void drain_fetches_locked(std::optional<SeqId> seq);
  void progress_loop();
  void heartbeat_loop();

  RemoteKvStoreOptions options;
  StoreShape shape;
  std::string peer;

  ucx::Context ucx_context;
  ucx::Worker worker;
  ucx::WorkerAddress worker_address;

  mutable std::mutex mutex;  // guards everything below and every use of worker
  net::RpcClient rpc;
  // The current registration. A lost one stays (and stays mapped) until the next successful
  // register replaces it.
  std::unique_ptr<Session> session;
  std::map<SeqId, Sequence> sequences;
  bool lost = false;
  bool answered = false;  // the last call_locked got a reply (an error reply included)
  std::uint64_t generation = 0;
  std::uint64_t lookups = 0;
  std::map<FetchKey, Fetch> fetches;  // prefetched ranges not yet located (mirror path only)

  // Drives the worker while prefetched gets are in flight (sleeps otherwise).
  std::condition_variable progress_wake;  // with mutex
  bool progress_stop = false;
  std::thread progress_thread;

  std::atomic<std::int64_t> lease_ms{10000};
  std::atomic<std::uint32_t> host_share{0};  // of the node's host threads (Registered, Lease)
  net::RpcClient heartbeat_rpc;              // the heartbeat thread's own socket
  std::mutex heartbeat_mutex;                // taken after mutex, never before
  Capability heartbeat_client;  // with heartbeat_mutex: session->client, for the heartbeats
  std::condition_variable heartbeat_wake;
  bool heartbeat_stop = false;
  std::thread heartbeat_thread;
};

}  // namespace kvpr::kvstore
