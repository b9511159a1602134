#include "kvpr/kvstore/remote_kv_store.h"

#include <capnp/message.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/block_layout.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "ucx.h"

namespace kvpr::kvstore {
namespace {

using net::Clock;

// One registration with a daemon: its UCX endpoint, the arena's remote key and where spans point.
struct Session {
  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    if (mirror != nullptr) munmap(mirror, arena_bytes);
  }

  std::uint64_t client = 0;
  std::uint64_t arena_address = 0;  // in the daemon
  std::size_t arena_bytes = 0;
  ucx::Endpoint endpoint;
  ucx::RemoteKey rkey;        // destroyed before endpoint
  std::byte* base = nullptr;  // the mapped arena (zero copy) or the mirror
  bool zero_copy = false;
  void* mirror = nullptr;  // owned anonymous mapping (no shared memory to the daemon)
};

struct Sequence {
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
  auto operator<=>(const FetchKey&) const = default;
};

// The gets of one prefetch: those still in flight (owned here until they complete) and the first
// error of those that landed.
struct Fetch {
  std::vector<void*> pending;
  ucs_status_t status = UCS_OK;
};

// Prefetches not yet located; past this many the oldest are completed and dropped first.
constexpr std::size_t kMaxFetches = 4096;
// How often the progress thread drives the worker while gets are in flight.
constexpr std::chrono::microseconds kProgressInterval{50};

}  // namespace

struct RemoteKvStore::Impl {
  Impl(zmq::context_t& context, const StoreShape& shape_in, RemoteKvStoreOptions options_in);

  using Build = std::function<void(wire::KvRequest::Builder)>;
  // One round trip: fills the request, waits for the reply. Throws disconnected (and marks the
  // registration lost) when no reply comes in time. Returns the reply frame, errors unchecked.
  std::unique_ptr<net::Frame> exchange(net::RpcClient& client, std::uint64_t client_id,
                                       const Build& build, net::milliseconds timeout);
  // exchange() then throws the reply's error; a `disconnected` one (unknown client: the lease
  // ran out or the daemon restarted) also marks the registration lost.
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

  std::atomic<std::uint64_t> client_id{0};
  std::atomic<std::int64_t> lease_ms{10000};
  net::RpcClient heartbeat_rpc;  // the heartbeat thread's own socket
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_wake;
  bool heartbeat_stop = false;
  std::thread heartbeat_thread;
};

RemoteKvStore::Impl::Impl(zmq::context_t& context, const StoreShape& shape_in,
                          RemoteKvStoreOptions options_in)
    : options(std::move(options_in)),
      shape(shape_in),
      peer("kvstore " + options.endpoint),
      ucx_context(UCP_FEATURE_RMA),
      worker(ucx_context, UCS_THREAD_MODE_SERIALIZED),
      worker_address(worker),
      rpc(context, options.endpoint, peer),
      heartbeat_rpc(context, options.endpoint, peer) {}

std::unique_ptr<net::Frame> RemoteKvStore::Impl::exchange(net::RpcClient& client,
                                                          std::uint64_t client_id_in,
                                                          const Build& build,
                                                          net::milliseconds timeout) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::KvRequest>();
  const std::uint64_t id = net::next_request_id();
  request.setId(id);
  request.setDeadlineUnixMs(net::deadline_unix_ms(timeout));
  request.setClient(client_id_in);
  build(request);
  return client.call<wire::KvReply>(message, id, timeout);
}

std::unique_ptr<net::Frame> RemoteKvStore::Impl::call_locked(const Build& build) {
  if (session == nullptr) raise(ErrorKind::disconnected, peer, ": not registered");
  std::unique_ptr<net::Frame> frame;
  answered = false;
  try {
    frame = exchange(rpc, session->client, build, options.timeout);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::disconnected) lost = true;
    throw;
  }
  answered = true;
  net::decode_guard([&] {
    const auto reply = frame->root<wire::KvReply>();
    if (!reply.isError()) return;
    if (reply.getError().getKind() == wire::ErrorKind::DISCONNECTED) lost = true;
    net::throw_error(reply.getError(), peer);
  });
  return frame;
}

void RemoteKvStore::Impl::register_locked() {
  auto frame = exchange(
      rpc, 0,
      [&](wire::KvRequest::Builder request) {
        auto reg = request.initRegister();
        reg.setName(options.name);
        wire_adapter::set_shape(reg.initShape(), shape);
        reg.setUcxAddress(wire_adapter::as_data(worker_address.bytes()));
      },
      options.timeout);
  auto next = std::make_unique<Session>();
  std::vector<std::byte> rkey;
  std::vector<std::byte> daemon_address;
  std::int64_t block_tokens = 0;
  std::uint64_t lease = 0;
  net::decode_guard([&] {
    const auto reply = frame->root<wire::KvReply>();
    if (reply.isError()) net::throw_error(reply.getError(), peer);
    if (!reply.isRegistered()) fail(peer, ": register answered with another reply");
    const auto reg = reply.getRegistered();
    next->client = reg.getClient();
    next->arena_address = reg.getArenaAddress();
    next->arena_bytes = reg.getArenaBytes();
    block_tokens = reg.getBlockTokens();
    lease = reg.getLeaseMs();
    const auto r = wire_adapter::as_bytes(reg.getRkey());
    rkey.assign(r.begin(), r.end());
    const auto a = wire_adapter::as_bytes(reg.getUcxAddress());
    daemon_address.assign(a.begin(), a.end());
  });
  if (block_tokens <= 0) fail(peer, ": registered with ", block_tokens, " tokens per block");
  next->endpoint = ucx::Endpoint(worker, daemon_address);
  next->rkey = ucx::RemoteKey(next->endpoint, rkey);
  if (void* mapped = next->rkey.ptr(next->arena_address)) {
    next->base = static_cast<std::byte*>(mapped);
    next->zero_copy = true;
  } else if (next->arena_bytes > 0) {
    void* p = mmap(nullptr, next->arena_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      raise(ErrorKind::overloaded, peer, ": cannot map a mirror of ", next->arena_bytes,
            " bytes: ", std::strerror(errno));
    }
    next->mirror = p;
    next->base = static_cast<std::byte*>(p);
  }
  // The registration is live: the previous one (its endpoint, rkey and mapping) goes now, after
  // the gets still writing into its mirror.
  if (session != nullptr) drain_fetches_locked(std::nullopt);
  session = std::move(next);
  sequences.clear();
  shape.block_tokens = block_tokens;
  lost = false;
  ++generation;
  lease_ms = static_cast<std::int64_t>(lease);
  client_id = session->client;
}

void RemoteKvStore::Impl::recover_locked() {
  if (session == nullptr) {
    register_locked();
    return;
  }
  if (!lost) return;
  // The registration may have survived (the daemon was only slow): ask before starting over.
  auto frame = exchange(
      rpc, session->client, [](wire::KvRequest::Builder request) { request.setHeartbeat(); },
      options.timeout);
  bool gone = false;
  net::decode_guard([&] {
    const auto reply = frame->root<wire::KvReply>();
    if (!reply.isError()) return;
    if (reply.getError().getKind() != wire::ErrorKind::DISCONNECTED) {
      net::throw_error(reply.getError(), peer);
    }
    gone = true;
  });
  if (gone) {
    register_locked();
  } else {
    lost = false;
  }
}

Sequence& RemoteKvStore::Impl::find_locked(SeqId seq) {
  auto it = sequences.find(seq);
  if (it == sequences.end()) fail(peer, ": unknown sequence ", seq);
  return it->second;
}

const Sequence& RemoteKvStore::Impl::find_locked(SeqId seq) const {
  auto it = sequences.find(seq);
  if (it == sequences.end()) fail(peer, ": unknown sequence ", seq);
  return it->second;
}

std::vector<HostSpan> RemoteKvStore::Impl::spans_locked(const Sequence& s, std::int64_t layer,
                                                        Part part, std::int64_t t0,
                                                        std::int64_t t1) const {
  const auto& blocks = s.blocks[static_cast<std::size_t>(layer)];
  std::byte* base = session->base;
  return spans_of(shape, part, t0, t1,
                  [&](std::int64_t b) { return base + blocks[static_cast<std::size_t>(b)]; });
}

void RemoteKvStore::Impl::add_pieces(std::vector<Piece>& pieces, const Sequence& q,
                                     std::int64_t layer, Part part, std::int64_t t0,
                                     std::int64_t t1) const {
  const std::size_t row = shape.row_bytes(part);
  for (const auto& span : spans_locked(q, layer, part, t0, t1)) {
    pieces.push_back({span.data, static_cast<std::size_t>(span.n_tokens) * row});
  }
}

std::vector<void*> RemoteKvStore::Impl::post_locked(const std::vector<Piece>& pieces, bool put,
                                                    ucs_status_t& first_error) {
  Session& s = *session;
  if (s.endpoint.get() == nullptr || s.endpoint.failed()) {
    lost = true;
    raise(ErrorKind::disconnected, peer, ": the UCX endpoint to the daemon is gone");
  }
  ucp_request_param_t param{};
  std::vector<void*> pending;
  first_error = UCS_OK;
  for (const Piece& piece : pieces) {
    if (piece.bytes == 0) continue;
    const std::uint64_t remote = s.arena_address + static_cast<std::uint64_t>(piece.data - s.base);
    void* request =
        put ? ucp_put_nbx(s.endpoint.get(), piece.data, piece.bytes, remote, s.rkey.get(), &param)
            : ucp_get_nbx(s.endpoint.get(), piece.data, piece.bytes, remote, s.rkey.get(), &param);
    if (UCS_PTR_IS_ERR(request)) {
      first_error = UCS_PTR_STATUS(request);
      break;
    }
    if (request != nullptr) pending.push_back(request);
  }
  if (put && first_error == UCS_OK) {  // puts are remotely complete only after a flush
    void* flush = ucp_ep_flush_nbx(s.endpoint.get(), &param);
    if (UCS_PTR_IS_ERR(flush)) {
      first_error = UCS_PTR_STATUS(flush);
    } else if (flush != nullptr) {
      pending.push_back(flush);
    }
  }
  return pending;
}

void RemoteKvStore::Impl::complete_locked(std::vector<void*>& pending, ucs_status_t first_error,
                                          bool put) {
  const auto deadline = Clock::now() + options.timeout;
  bool timed_out = false;
  for (void* request : pending) {
    ucs_status_t status = worker.wait(request, timed_out ? Clock::time_point::max() : deadline);
    if (status == UCS_ERR_TIMED_OUT) {
      // The daemon stopped answering: closing the endpoint completes what is still pending.
      timed_out = true;
      session->endpoint.close();
      status = worker.wait(request, Clock::time_point::max());
    }
    if (status != UCS_OK && first_error == UCS_OK) first_error = status;
  }
  pending.clear();
  if (timed_out) {
    lost = true;
    raise(ErrorKind::disconnected, peer, ": ", put ? "ucp_put" : "ucp_get",
          " did not complete within ", options.timeout.count(), " ms");
  }
  if (first_error != UCS_OK) {
    lost = true;
    ucx::throw_status(put ? "ucp_put_nbx" : "ucp_get_nbx", first_error);
  }
}

void RemoteKvStore::Impl::transfer_locked(const std::vector<Piece>& pieces, bool put) {
  ucs_status_t first_error = UCS_OK;
  std::vector<void*> pending = post_locked(pieces, put, first_error);
  complete_locked(pending, first_error, put);
}

void RemoteKvStore::Impl::reap_locked() {
  for (auto& [key, fetch] : fetches) {
    std::erase_if(fetch.pending, [&](void* request) {
      const ucs_status_t status = ucp_request_check_status(request);
      if (status == UCS_INPROGRESS) return false;
      ucp_request_free(request);
      if (status != UCS_OK && fetch.status == UCS_OK) fetch.status = status;
      return true;
    });
  }
}

bool RemoteKvStore::Impl::fetches_in_flight_locked() const {
  for (const auto& [key, fetch] : fetches) {
    if (!fetch.pending.empty()) return true;
  }
  return false;
}

void RemoteKvStore::Impl::drain_fetches_locked(std::optional<SeqId> seq) {
  for (auto it = fetches.begin(); it != fetches.end();) {
    if (seq && it->first.seq != *seq) {
      ++it;
      continue;
    }
    try {
      complete_locked(it->second.pending, UCS_OK, false);
    } catch (const Error&) {  // the rows are not wanted any more; lost is already marked
    }
    it = fetches.erase(it);
  }
}

void RemoteKvStore::Impl::progress_loop() {
  std::unique_lock lock(mutex);
  while (!progress_stop) {
    if (!fetches_in_flight_locked()) {
      progress_wake.wait(lock);
      continue;
    }
    while (worker.progress() != 0) {
    }
    reap_locked();
    lock.unlock();
    std::this_thread::sleep_for(kProgressInterval);
    lock.lock();
  }
}

void RemoteKvStore::Impl::heartbeat_loop() {
  std::unique_lock lock(heartbeat_mutex);
  for (;;) {
    const auto interval = net::milliseconds(std::max<std::int64_t>(lease_ms.load() / 3, 10));
    if (heartbeat_wake.wait_for(lock, interval, [&] { return heartbeat_stop; })) return;
    const std::uint64_t id = client_id.load();
    if (id == 0) continue;
    lock.unlock();
    bool gone = false;
    try {
      auto frame = exchange(
          heartbeat_rpc, id, [](wire::KvRequest::Builder request) { request.setHeartbeat(); },
          options.timeout);
      net::decode_guard([&] { gone = frame->root<wire::KvReply>().isError(); });
    } catch (const Error&) {
      gone = true;  // no answer: recover_locked() checks again before starting over
    }
    if (gone) {
      std::lock_guard state(mutex);
      if (session != nullptr && session->client == id) lost = true;
    }
    lock.lock();
  }
}

// --- RemoteKvStore ---------------------------------------------------------------------------

RemoteKvStore::RemoteKvStore(zmq::context_t& context, const StoreShape& shape,
                             RemoteKvStoreOptions options)
    : impl_(std::make_unique<Impl>(context, shape, std::move(options))) {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mutex);
    s.register_locked();
  }
  if (s.options.heartbeat) s.heartbeat_thread = std::thread([&s] { s.heartbeat_loop(); });
  s.progress_thread = std::thread([&s] { s.progress_loop(); });
}

RemoteKvStore::~RemoteKvStore() {
  Impl& s = *impl_;
  if (s.heartbeat_thread.joinable()) {
    {
      std::lock_guard lock(s.heartbeat_mutex);
      s.heartbeat_stop = true;
    }
    s.heartbeat_wake.notify_all();
    s.heartbeat_thread.join();
  }
  {
    std::lock_guard lock(s.mutex);
    s.progress_stop = true;
  }
  s.progress_wake.notify_all();
  s.progress_thread.join();
  std::lock_guard lock(s.mutex);
  s.drain_fetches_locked(std::nullopt);
  if (s.session != nullptr && !s.lost) {
    try {  // best effort: a lease that runs out frees the same memory later
      s.exchange(
          s.rpc, s.session->client,
          [](wire::KvRequest::Builder request) { request.setUnregister(); },
          std::min(s.options.timeout, net::milliseconds(500)));
    } catch (const std::exception&) {
    }
  }
}

const StoreShape& RemoteKvStore::shape() const {
  return impl_->shape;
}

SeqId RemoteKvStore::open() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  s.recover_locked();
  for (int attempt = 0;; ++attempt) {
    try {
      auto frame = s.call_locked([](wire::KvRequest::Builder request) { request.setOpen(); });
      SeqId seq = 0;
      net::decode_guard([&] { seq = frame->root<wire::KvReply>().getOpened(); });
      s.sequences[seq].blocks.resize(static_cast<std::size_t>(s.shape.n_layers));
      return seq;
    } catch (const Error& e) {
      // The daemon answered "unknown client" (the lease ran out, or it restarted, since the
      // check): register once more. No answer at all is final: the caller's timeout is spent.
      if (attempt > 0 || e.kind() != ErrorKind::disconnected || !s.answered) throw;
      s.recover_locked();
    }
  }
}

void RemoteKvStore::reserve(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("reserve", seqs, n_tokens, kMaxTokens);
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  // The block tables are here: only the sequences whose blocks fall short go to the daemon.
  std::vector<SeqId> short_of;
  std::vector<Sequence*> growing;
  for (const SeqId seq : seqs) s.find_locked(seq);  // all known before anything changes
  for (const SeqId seq : seqs) {
    Sequence& q = s.find_locked(seq);
    const std::int64_t target = q.length + n_tokens;
    const auto held = static_cast<std::int64_t>(q.blocks.front().size());
    if (blocks_for(s.shape, target) <= held) {
      // Inside blocks it holds: reserved here, and the daemon learns it with the commit.
      q.reserved = std::max(q.reserved, target);
      continue;
    }
    short_of.push_back(seq);
    growing.push_back(&q);
  }
  if (short_of.empty()) return;
  auto frame = s.call_locked([&](wire::KvRequest::Builder request) {
    auto batch = request.initReserveBatch();
    auto list = batch.initSeqs(static_cast<unsigned>(short_of.size()));
    for (unsigned i = 0; i < short_of.size(); ++i) list.set(i, short_of[i]);
    batch.setNTokens(n_tokens);
  });
  net::decode_guard([&] {
    const auto replies = frame->root<wire::KvReply>().getReservedBatch();
    if (replies.size() != short_of.size()) {
      fail(s.peer, ": reserve of ", short_of.size(), " sequences answered with ", replies.size(),
           " reservations");
    }
    for (unsigned i = 0; i < replies.size(); ++i) {
      const auto r = replies[i];
      const std::int64_t first = r.getFirstBlock();
      const std::int64_t per_layer = r.getBlocksPerLayer();
      const auto offsets = r.getOffsets();
      if (first < 0 || per_layer < 0 ||
          offsets.size() != static_cast<std::size_t>(per_layer * s.shape.n_layers)) {
        fail(s.peer, ": reserve reply with ", offsets.size(), " offsets for ", per_layer,
             " blocks per layer");
      }
      Sequence& q = *growing[i];
      unsigned next = 0;
      for (auto& layer_blocks : q.blocks) {
        layer_blocks.resize(std::min(layer_blocks.size(), static_cast<std::size_t>(first)));
        for (std::int64_t b = 0; b < per_layer; ++b) layer_blocks.push_back(offsets[next++]);
      }
      q.reserved = r.getReservedTokens();
    }
  });
}

void RemoteKvStore::prefetch(std::span<const Range> ranges) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  if (s.fetches.size() + ranges.size() > kMaxFetches) s.drain_fetches_locked(std::nullopt);
  for (const Range& r : ranges) {
    const Sequence& q = s.find_locked(r.seq);
    if (r.layer < 0 || r.layer >= s.shape.n_layers) {
      fail(s.peer, ": prefetch of layer ", r.layer, " out of range");
    }
    if (r.t0 < 0 || r.t1 < r.t0 || r.t1 > q.reserved) {
      fail(s.peer, ": prefetch of token range [", r.t0, ", ", r.t1, ") outside the ", q.reserved,
           " reserved tokens of sequence ", r.seq);
    }
    // Same host: spans point into the daemon's memory, nothing to fetch. Else only committed
    // rows live at the daemon; reserved ones are this client's until commit.
    if (s.session->zero_copy) continue;
    const FetchKey key{r.seq, r.layer, r.part, r.t0, std::min(r.t1, q.length)};
    if (key.t0 >= key.t1 || s.fetches.contains(key)) continue;
    std::vector<Impl::Piece> pieces;
    s.add_pieces(pieces, q, r.layer, r.part, key.t0, key.t1);
    Fetch fetch;
    fetch.pending = s.post_locked(pieces, false, fetch.status);
    s.fetches.emplace(key, std::move(fetch));
  }
  s.progress_wake.notify_one();
}

std::vector<HostSpan> RemoteKvStore::locate(SeqId seq, std::int64_t layer, Part part,
                                            std::int64_t t0, std::int64_t t1) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  ++s.lookups;
  const Sequence& q = s.find_locked(seq);
  if (layer < 0 || layer >= s.shape.n_layers) fail(s.peer, ": layer ", layer, " out of range");
  if (t0 < 0 || t1 < t0 || t1 > q.reserved) {
    fail(s.peer, ": token range [", t0, ", ", t1, ") outside the ", q.reserved,
         " reserved tokens of sequence ", seq);
  }
  if (!s.session->zero_copy && t0 < q.length) {
    // Committed rows come from the daemon; reserved ones are this client's until commit. A
    // prefetch that covers them is waited for (only its gets still in flight); else fetch now.
    const FetchKey want{seq, layer, part, t0, std::min(t1, q.length)};
    auto covering = s.fetches.end();
    for (auto it = s.fetches.lower_bound({seq, layer, part, 0, 0});
         it != s.fetches.end() && it->first.seq == seq && it->first.layer == layer &&
         it->first.part == part && it->first.t0 <= want.t0;
         ++it) {
      if (it->first == want) {
        covering = it;
        break;
      }
      if (it->first.t1 >= want.t1) covering = it;
    }
    if (covering != s.fetches.end()) {
      Fetch& fetch = covering->second;
      const ucs_status_t status = std::exchange(fetch.status, UCS_OK);
      const bool exact = covering->first == want;
      try {
        s.complete_locked(fetch.pending, status, false);
      } catch (const Error&) {
        s.fetches.erase(covering);
        throw;
      }
      if (exact) s.fetches.erase(covering);  // a wider one may serve another range still
    } else {
      std::vector<Impl::Piece> pieces;
      s.add_pieces(pieces, q, layer, part, want.t0, want.t1);
      s.transfer_locked(pieces, false);
    }
  }
  return s.spans_locked(q, layer, part, t0, t1);
}

void RemoteKvStore::commit(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("commit", seqs, n_tokens, kMaxTokens);
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  std::vector<Sequence*> found;
  for (const SeqId seq : seqs) {
    Sequence& q = s.find_locked(seq);
    if (n_tokens > q.reserved - q.length) {
      fail(s.peer, ": commit of ", n_tokens, " tokens to sequence ", seq, " with ", q.length,
           " committed and ", q.reserved, " reserved");
    }
    found.push_back(&q);
  }
  if (found.empty() || n_tokens == 0) return;
  if (!s.session->zero_copy) {  // the rows first (one flush for the batch), then the lengths
    std::vector<Impl::Piece> pieces;
    for (const Sequence* q : found) {
      for (std::int64_t layer = 0; layer < s.shape.n_layers; ++layer) {
        for (Part part : {Part::act, Part::k, Part::v}) {
          s.add_pieces(pieces, *q, layer, part, q->length, q->length + n_tokens);
        }
      }
    }
    s.transfer_locked(pieces, true);
  }
  s.call_locked([&](wire::KvRequest::Builder request) {
    auto batch = request.initCommitBatch();
    auto list = batch.initSeqs(static_cast<unsigned>(seqs.size()));
    for (unsigned i = 0; i < seqs.size(); ++i) list.set(i, seqs[i]);
    batch.setNTokens(n_tokens);
  });
  for (Sequence* q : found) q->length += n_tokens;
}

std::int64_t RemoteKvStore::length(SeqId seq) const {
  const Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  return s.find_locked(seq).length;
}

void RemoteKvStore::truncate(SeqId seq, std::int64_t n_tokens) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  Sequence& q = s.find_locked(seq);
  s.drain_fetches_locked(seq);  // their gets write into blocks truncate may hand back
  s.call_locked([&](wire::KvRequest::Builder request) {
    auto st = request.initTruncate();
    st.setSeq(seq);
    st.setNTokens(n_tokens);
  });
  const auto keep = static_cast<std::size_t>(blocks_for(s.shape, n_tokens));
  for (auto& layer_blocks : q.blocks) {
    if (layer_blocks.size() > keep) layer_blocks.resize(keep);
  }
  q.length = n_tokens;
  q.reserved = std::min(q.reserved, static_cast<std::int64_t>(keep) * s.shape.block_tokens);
}

void RemoteKvStore::free(SeqId seq) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  s.find_locked(seq);
  s.drain_fetches_locked(seq);  // their gets write into blocks the daemon will hand out again
  s.sequences.erase(seq);       // gone for this client even when the daemon cannot be told
  s.call_locked([&](wire::KvRequest::Builder request) { request.setFree(seq); });
}

StoreStats RemoteKvStore::stats() const {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  auto frame = s.call_locked([](wire::KvRequest::Builder request) { request.setStats(); });
  StoreStats st;
  net::decode_guard([&] {
    const auto r = frame->root<wire::KvReply>().getStats();
    st.capacity_bytes = r.getCapacityBytes();
    st.used_bytes = r.getUsedBytes();
    st.sequences = r.getSequences();
    st.allocation_failures = r.getAllocationFailures();
  });
  st.lookups = s.lookups;
  return st;
}

std::vector<HostSpan> RemoteKvStore::locate_at_daemon(SeqId seq, std::int64_t layer, Part part,
                                                      std::int64_t t0, std::int64_t t1) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  auto frame = s.call_locked([&](wire::KvRequest::Builder request) {
    auto loc = request.initLocate();
    loc.setSeq(seq);
    loc.setLayer(layer);
    loc.setPart(wire_adapter::to_wire(part));
    loc.setT0(t0);
    loc.setT1(t1);
  });
  std::vector<HostSpan> spans;
  net::decode_guard([&] {
    for (const auto span : frame->root<wire::KvReply>().getSpans()) {
      if (span.getOffset() >= s.session->arena_bytes) {
        fail(s.peer, ": span offset ", span.getOffset(), " outside the arena");
      }
      spans.push_back({s.session->base + span.getOffset(), span.getT0(), span.getNTokens()});
    }
  });
  return spans;
}

bool RemoteKvStore::zero_copy() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->zero_copy;
}

void* RemoteKvStore::arena() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->base;
}

std::size_t RemoteKvStore::arena_bytes() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->arena_bytes;
}

std::uint64_t RemoteKvStore::generation() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->generation;
}

std::uint64_t RemoteKvStore::client_id() const {
  return impl_->client_id.load();
}

}  // namespace kvpr::kvstore
