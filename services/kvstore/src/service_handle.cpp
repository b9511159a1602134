// KvStoreService's wire adapter: one request frame in, one reply frame out. decode() reads every
// field into a plain Request (so a malformed message fails before anything changes), check()
// turns wire values into kvpr's types and bounds them, one handler per request type runs it on the
// client's LocalKvStore view, and the reply builders below encode the answer. Every failure
// becomes an error reply counted under kvpr_rejected_messages_total{reason}, by its type or kind:
//   malformed     net::MalformedMessage: not a Cap'n Proto message, truncated, oversized, wrong
//                 frame count
//   unknown_type  a union member this build does not know (kind unimplemented)
//   expired       past deadlineUnixMs
//   permission_denied  a client handle that is not the caller's (unknown, or registered by
//                 another principal), a sequence that is not the client's, or any request
//                 without a principal when options.require_principal
//   quota         a client past one of its quotas (sequences, metadata, blocks): `overloaded`
//   invalid       any other error: out-of-range fields, a bad or absurd shape, a batch that lists
//                 a sequence twice or more than kMaxBatch of them
// A full store is not a bad message: other `overloaded` replies count as allocation failures.
#include <capnp/message.h>

#include <span>
#include <string_view>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "service_impl.h"
#include "service_request.h"

namespace kvpr::kvstore {
namespace {

using Impl = KvStoreService::Impl;

constexpr std::int64_t kMaxLayers = 1 << 16;
constexpr std::int64_t kMaxWidth = 1 << 24;
constexpr std::size_t kMaxClientName = 256;
constexpr std::uint32_t kMaxHostThreads = 4096;  // asked for by one client

StoreShape checked_shape(const Request& req) {
  if (req.n_layers <= 0 || req.n_layers > kMaxLayers || req.h <= 0 || req.h > kMaxWidth ||
      req.h_kv <= 0 || req.h_kv > kMaxWidth) {
    fail("kvstore: invalid shape (layers ", req.n_layers, ", h ", req.h, ", h_kv ", req.h_kv, ")");
  }
  StoreShape shape;
  shape.n_layers = req.n_layers;
  shape.h = req.h;
  shape.h_kv = req.h_kv;
  shape.dtype = wire_adapter::from_wire(req.dtype);
  return shape;
}

// The batch's sequences as ids in the client's view, in order (a handle listed twice stays twice:
// the view refuses that); permission_denied when any is not the client's.
std::vector<SeqId> checked_batch(const Impl& s, const Impl::Client& client, const Request& req) {
  if (req.batch_size > kMaxBatch) {
    fail("kvstore: ", type_name(req.which), " of ", req.batch_size, " sequences (at most ",
         kMaxBatch, ")");
  }
  std::vector<SeqId> ids;
  ids.reserve(req.seqs.size());
  for (const Capability seq : req.seqs) {
    ids.push_back(s.sequence_locked(client, seq, type_name(req.which)));
  }
  return ids;
}

// --- Reply builders ----------------------------------------------------------------------------

// One reply under construction: the id is set, the handler picks the union member.
class Reply {
 public:
  explicit Reply(std::uint64_t id) : root_(message_.initRoot<wire::KvReply>()) { root_.setId(id); }
  wire::KvReply::Builder get() { return root_; }
  zmq::message_t encode() { return net::encode(message_); }

 private:
  capnp::MallocMessageBuilder message_;
  wire::KvReply::Builder root_;
};

void set_reserved(wire::Reserved::Builder out, const Reservation& r) {
  out.setReservedTokens(r.reserved_tokens);
  out.setFirstBlock(r.first_block);
  out.setBlocksPerLayer(r.blocks_per_layer);
  auto offsets = out.initOffsets(static_cast<unsigned>(r.offsets.size()));
  for (unsigned i = 0; i < r.offsets.size(); ++i) offsets.set(i, r.offsets[i]);
}

void set_stats(wire::Stats::Builder out, const KvStoreServiceStats& st) {
  out.setCapacityBytes(st.capacity_bytes);
  out.setUsedBytes(st.used_bytes);
  out.setSequences(st.sequences);
  out.setClients(st.clients);
  out.setLookups(st.lookups);
  out.setAllocationFailures(st.allocation_failures);
  out.setLeaseExpiries(st.lease_expiries);
  out.setRejectedMessages(st.rejected_messages);
}

// --- Handlers: one per request type, mutex held ------------------------------------------------

// A shape this store could never serve is refused here, before it costs anything: a token of one
// layer must fit a page, one token of every layer must fit the arena, and one sequence's tables
// must fit the per-client metadata quota.
void check_fits(const Impl& s, const StoreShape& shape, std::size_t token_bytes) {
  if (token_bytes > s.pool->page_bytes()) {
    fail("kvstore: one token of one layer takes ", token_bytes, " bytes, more than a page of ",
         s.pool->page_bytes(), " bytes");
  }
  if (static_cast<std::uint64_t>(shape.n_layers) > s.pool->n_pages()) {
    fail("kvstore: a shape of ", shape.n_layers, " layers needs ", shape.n_layers,
         " pages for one token; the store has ", s.pool->n_pages());
  }
  const std::uint64_t table = Impl::sequence_metadata_bytes(shape);
  const std::uint64_t quota = s.options.max_metadata_bytes_per_client;
  if (quota != 0 && table > quota) {
    fail("kvstore: a shape of ", shape.n_layers, " layers takes ", table,
         " bytes of tables per sequence, more than the per-client quota of ", quota);
  }
}

void on_register(Impl& s, const Request& req, wire::KvReply::Builder reply) {
  if (req.name.size() > kMaxClientName) {
    fail("kvstore: client name of ", req.name.size(), " bytes (at most ", kMaxClientName, ")");
  }
  StoreShape shape = checked_shape(req);
  const std::size_t token_bytes =
      static_cast<std::size_t>(shape.h + 2 * shape.h_kv) * size_of(shape.dtype);
  check_fits(s, shape, token_bytes);
  shape.block_tokens = static_cast<std::int64_t>(s.pool->page_bytes() / token_bytes);
  auto store = std::make_unique<LocalKvStore>(shape, *s.pool);
  if (s.options.max_block_bytes_per_client != 0) {
    store->set_page_quota(
        static_cast<std::size_t>(s.options.max_block_bytes_per_client / s.pool->page_bytes()));
  }
  Impl::Client client;
  client.name = req.name;
  client.principal = std::string(req.principal);
  client.store = std::move(store);
  client.lease_end = net::Clock::now() + s.options.lease;
  client.host_threads = std::min<std::uint32_t>(req.host_threads, kMaxHostThreads);
  const Capability handle = s.add_client_locked(std::move(client));
  auto out = reply.initRegistered();
  out.setHostThreads(s.host_share_locked(s.clients.at(handle)));
  set_capability(out.initClient(), handle);
  out.setBlockTokens(shape.block_tokens);
  out.setLeaseMs(static_cast<std::uint64_t>(s.options.lease.count()));
  out.setArenaAddress(reinterpret_cast<std::uintptr_t>(s.memory.address()));
  out.setArenaBytes(s.pool->arena_bytes());
  out.setRkey(wire_adapter::as_data(s.rkey.bytes()));
  out.setUcxAddress(wire_adapter::as_data(s.worker_address.bytes()));
}

// Anyone may ask for the daemon's stats; a registered client also renews its lease.
void on_stats(Impl& s, const Request& req, wire::KvReply::Builder reply) {
  set_stats(reply.initStats(), s.stats_locked());
  auto it = s.clients.find(req.client);
  if (it != s.clients.end() && it->second.principal == req.principal) {
    it->second.lease_end = net::Clock::now() + s.options.lease;
  }
}

void on_locate(Impl& s, LocalKvStore& store, SeqId seq, const Request& req,
               wire::KvReply::Builder reply) {
  const auto spans =
      store.locate(seq, req.layer, wire_adapter::from_wire(req.part), req.t0, req.t1);
  ++s.lookups;
  s.instruments->lookups.Increment();
  auto out = reply.initSpans(static_cast<unsigned>(spans.size()));
  for (unsigned i = 0; i < spans.size(); ++i) {
    out[i].setOffset(s.pool->offset_of(spans[i].data).value_or(0));
    out[i].setT0(spans[i].t0);
    out[i].setNTokens(spans[i].n_tokens);
  }
}

void on_reserve_batch(LocalKvStore& store, std::span<const SeqId> seqs, const Request& req,
                      wire::KvReply::Builder reply) {
  const auto reservations = store.reserve_blocks(seqs, req.n_tokens);
  auto out = reply.initReservedBatch(static_cast<unsigned>(reservations.size()));
  for (unsigned i = 0; i < reservations.size(); ++i) set_reserved(out[i], reservations[i]);
}

// The requests of a registered client: ownership is checked (the client is the caller's, every
// sequence the client's), the lease is renewed, then the request runs on the client's view.
void on_client_request(Impl& s, const Request& req, wire::KvReply::Builder reply) {
  const std::string_view op = type_name(req.which);
  Impl::Client& client = s.client_locked(req.client, req.principal, op);
  client.lease_end = net::Clock::now() + s.options.lease;
  LocalKvStore& store = *client.store;
  const auto seq = [&] { return s.sequence_locked(client, req.seq, op); };
  switch (req.which) {
    case Which::HEARTBEAT:
      reply.initLease().setHostThreads(s.host_share_locked(client));
      return;
    case Which::UNREGISTER:
      s.erase_client_locked(s.clients.find(req.client));
      reply.setOk();
      return;
    case Which::OPEN:
      set_capability(reply.initOpened(), s.open_locked(client));
      return;
    case Which::RESERVE: {
      const SeqId id = seq();
      set_reserved(reply.initReserved(), store.reserve_blocks({&id, 1}, req.n_tokens).front());
      return;
    }
    case Which::RESERVE_BATCH:
      on_reserve_batch(store, checked_batch(s, client, req), req, reply);
      return;
    case Which::COMMIT:
      store.commit(seq(), req.n_tokens);
      reply.setOk();
      return;
    case Which::COMMIT_BATCH:  // the client reserves inside its blocks without asking
      store.commit_in_blocks(checked_batch(s, client, req), req.n_tokens);
      reply.setOk();
      return;
    case Which::LOCATE:
      on_locate(s, store, seq(), req, reply);
      return;
    case Which::LENGTH:
      reply.setLength(store.length(seq()));
      return;
    case Which::TRUNCATE:
      store.truncate(seq(), req.n_tokens);
      reply.setOk();
      return;
    case Which::FREE:
      s.free_locked(client, req.seq, op);
      reply.setOk();
      return;
    case Which::REGISTER:
    case Which::STATS:
      break;
  }
  fail("kvstore: request type ", op, " is not a client request");
}

}  // namespace

zmq::message_t KvStoreService::Impl::error_reply(std::uint64_t id, const Error& error) {
  Reply reply(id);
  net::set_error(reply.get().initError(), error);
  return reply.encode();
}

zmq::message_t KvStoreService::Impl::handle(const void* data, std::size_t size,
                                            std::string_view principal) {
  Request req;
  req.principal = principal;
  // 1. Decode: the id first, so even a message that breaks later gets an addressed reply.
  try {
    net::Frame frame(data, size);
    net::decode_guard([&] { req.id = frame.root<wire::KvRequest>().getId(); });
    net::decode_guard([&] { decode(frame.root<wire::KvRequest>(), req); });
  } catch (const net::MalformedMessage& e) {
    reject("malformed");
    return error_reply(req.id, e);
  } catch (const std::exception& e) {
    reject("malformed");
    return error_reply(req.id, net::MalformedMessage(e.what()));
  }
  if (!req.known) {
    reject("unknown_type");
    instruments->requests.Add({{"type", "unknown"}}).Increment();
    return error_reply(req.id, Error(ErrorKind::unimplemented, str("kvstore: unknown request type ",
                                                                   static_cast<unsigned>(req.which),
                                                                   " (request ", req.id, ")")));
  }
  instruments->requests.Add({{"type", std::string(type_name(req.which))}}).Increment();
  if (req.deadline_unix_ms != 0) {
    const std::uint64_t now = net::now_unix_ms();
    if (now > req.deadline_unix_ms) {
      reject("expired");
      return error_reply(req.id, Error(ErrorKind::disconnected,
                                       str("kvstore: request ", req.id, " expired ",
                                           now - req.deadline_unix_ms, " ms before it was read")));
    }
  }

  if (options.require_principal && principal.empty()) {
    reject("permission_denied");
    return error_reply(req.id,
                       Error(ErrorKind::permission_denied,
                             str("kvstore: ", type_name(req.which),
                                 " refused: this kvstore serves authenticated peers only")));
  }

  // 2. Execute and encode.
  Reply reply(req.id);
  std::lock_guard lock(mutex);
  ++requests;
  try {
    if (req.which == Which::REGISTER) {
      on_register(*this, req, reply.get());
    } else if (req.which == Which::STATS) {
      on_stats(*this, req, reply.get());
    } else {
      on_client_request(*this, req, reply.get());
    }
    refresh_gauges_locked();
    return reply.encode();
  } catch (const QuotaExceeded& e) {
    reject("quota");
    return error_reply(req.id, e);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::overloaded) {
      instruments->allocation_failures.Increment();
    } else if (e.kind() == ErrorKind::permission_denied) {
      reject("permission_denied");
    } else {
      reject("invalid");
    }
    return error_reply(req.id, e);
  } catch (const std::exception& e) {
    reject("invalid");
    return error_reply(req.id, Error(ErrorKind::failed, str("kvstore: ", e.what())));
  }
}

}  // namespace kvpr::kvstore
