#include "kvpr/kvstore/remote_kv_store.h"

#include <capnp/message.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

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
  // The registration is live: the previous one (its endpoint, rkey and mapping) goes now.
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

void RemoteKvStore::Impl::transfer_locked(const std::vector<Piece>& pieces, bool put) {
  Session& s = *session;
  if (s.endpoint.get() == nullptr || s.endpoint.failed()) {
    lost = true;
    raise(ErrorKind::disconnected, peer, ": the UCX endpoint to the daemon is gone");
  }
  const auto deadline = Clock::now() + options.timeout;
  ucp_request_param_t param{};
  std::vector<void*> pending;
  ucs_status_t first_error = UCS_OK;
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
  bool timed_out = false;
  for (void* request : pending) {
    ucs_status_t status = worker.wait(request, timed_out ? Clock::time_point::max() : deadline);
    if (status == UCS_ERR_TIMED_OUT) {
      // The daemon stopped answering: closing the endpoint completes what is still pending.
      timed_out = true;
      s.endpoint.close();
      status = worker.wait(request, Clock::time_point::max());
    }
    if (status != UCS_OK && first_error == UCS_OK) first_error = status;
  }
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
  std::lock_guard lock(s.mutex);
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

void RemoteKvStore::reserve(SeqId seq, std::int64_t n_tokens) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  Sequence& q = s.find_locked(seq);
  auto frame = s.call_locked([&](wire::KvRequest::Builder request) {
    auto st = request.initReserve();
    st.setSeq(seq);
    st.setNTokens(n_tokens);
  });
  net::decode_guard([&] {
    const auto r = frame->root<wire::KvReply>().getReserved();
    const std::int64_t first = r.getFirstBlock();
    const std::int64_t per_layer = r.getBlocksPerLayer();
    const auto offsets = r.getOffsets();
    if (first < 0 || per_layer < 0 ||
        offsets.size() != static_cast<std::size_t>(per_layer * s.shape.n_layers)) {
      fail(s.peer, ": reserve reply with ", offsets.size(), " offsets for ", per_layer,
           " blocks per layer");
    }
    unsigned next = 0;
    for (auto& layer_blocks : q.blocks) {
      layer_blocks.resize(std::min(layer_blocks.size(), static_cast<std::size_t>(first)));
      for (std::int64_t i = 0; i < per_layer; ++i) layer_blocks.push_back(offsets[next++]);
    }
    q.reserved = r.getReservedTokens();
  });
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
    // Committed rows come from the daemon; reserved ones are this client's until commit.
    std::vector<Impl::Piece> pieces;
    s.add_pieces(pieces, q, layer, part, t0, std::min(t1, q.length));
    s.transfer_locked(pieces, false);
  }
  return s.spans_locked(q, layer, part, t0, t1);
}

void RemoteKvStore::commit(SeqId seq, std::int64_t n_tokens) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  Sequence& q = s.find_locked(seq);
  if (n_tokens < 0 || n_tokens > q.reserved - q.length) {
    fail(s.peer, ": commit of ", n_tokens, " tokens to sequence ", seq, " with ", q.length,
         " committed and ", q.reserved, " reserved");
  }
  if (!s.session->zero_copy && n_tokens > 0) {
    std::vector<Impl::Piece> pieces;
    for (std::int64_t layer = 0; layer < s.shape.n_layers; ++layer) {
      for (Part part : {Part::act, Part::k, Part::v}) {
        s.add_pieces(pieces, q, layer, part, q.length, q.length + n_tokens);
      }
    }
    s.transfer_locked(pieces, true);
  }
  s.call_locked([&](wire::KvRequest::Builder request) {
    auto st = request.initCommit();
    st.setSeq(seq);
    st.setNTokens(n_tokens);
  });
  q.length += n_tokens;
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
  s.sequences.erase(seq);  // gone for this client even when the daemon cannot be told
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
