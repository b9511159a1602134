// RemoteKvStore's connection to the daemon (remote_impl.h): request/reply over the RPC client,
// registration (worker id, arena mapping, host-thread share), recovery after the daemon restarts
// or forgets this worker, and the heartbeat thread. remote_kv_store.cpp holds the store's calls.
#include <capnp/message.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/remote_kv_store.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "remote_impl.h"
#include "ucx.h"

namespace kvpr::kvstore {

using remote::Sequence;
using remote::Session;

RemoteKvStore::Impl::Impl(zmq::context_t& context, const StoreShape& shape_in,
                          RemoteKvStoreOptions options_in)
    : options(std::move(options_in)),
      shape(shape_in),
      peer("kvstore " + options.endpoint),
      ucx_context(UCP_FEATURE_RMA, options.endpoint),
      worker(ucx_context, UCS_THREAD_MODE_SERIALIZED),
      worker_address(worker),
      rpc(context, options.endpoint, peer),
      heartbeat_rpc(context, options.endpoint, peer) {}

std::unique_ptr<net::Frame> RemoteKvStore::Impl::exchange(net::RpcClient& client,
                                                          Capability client_handle,
                                                          const Build& build,
                                                          net::milliseconds timeout) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::KvRequest>();
  const std::uint64_t id = net::next_request_id();
  request.setId(id);
  request.setDeadlineUnixMs(net::deadline_unix_ms(timeout));
  if (!client_handle.empty()) set_capability(request.initClient(), client_handle);
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
    const auto kind = reply.getError().getKind();
    if (kind == wire::ErrorKind::DISCONNECTED || kind == wire::ErrorKind::PERMISSION_DENIED) {
      lost = true;
    }
    if (kind == wire::ErrorKind::PERMISSION_DENIED) {
      raise(ErrorKind::disconnected, peer,
            ": registration lost: ", reply.getError().getReason().cStr());
    }
    net::throw_error(reply.getError(), peer);
  });
  return frame;
}

void RemoteKvStore::Impl::register_locked() {
  auto frame = exchange(
      rpc, Capability{},
      [&](wire::KvRequest::Builder request) {
        auto reg = request.initRegister();
        reg.setName(options.name);
        wire_adapter::set_shape(reg.initShape(), shape);
        reg.setUcxAddress(wire_adapter::as_data(worker_address.bytes()));
        reg.setHostThreads(options.host_threads);
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
    next->client = get_capability(reg.getClient());
    next->arena_address = reg.getArenaAddress();
    next->arena_bytes = reg.getArenaBytes();
    block_tokens = reg.getBlockTokens();
    lease = reg.getLeaseMs();
    host_share = reg.getHostThreads();
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
  std::lock_guard heartbeat_lock(heartbeat_mutex);
  heartbeat_client = session->client;
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
    const auto kind = reply.getError().getKind();
    if (kind != wire::ErrorKind::DISCONNECTED && kind != wire::ErrorKind::PERMISSION_DENIED) {
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

void RemoteKvStore::Impl::heartbeat_loop() {
  std::unique_lock lock(heartbeat_mutex);
  for (;;) {
    const auto interval = net::milliseconds(std::max<std::int64_t>(lease_ms.load() / 3, 10));
    if (heartbeat_wake.wait_for(lock, interval, [&] { return heartbeat_stop; })) return;
    const Capability id = heartbeat_client;
    if (id.empty()) continue;
    lock.unlock();
    bool gone = false;
    try {
      auto frame = exchange(
          heartbeat_rpc, id, [](wire::KvRequest::Builder request) { request.setHeartbeat(); },
          options.timeout);
      net::decode_guard([&] {
        const auto reply = frame->root<wire::KvReply>();
        gone = reply.isError();
        if (reply.isLease()) host_share = reply.getLease().getHostThreads();
      });
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

}  // namespace kvpr::kvstore
