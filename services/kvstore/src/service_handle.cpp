// KvStoreService's wire adapter: one request frame in, one reply frame out. Decoding reads every
// field into a plain Request inside decode_guard (so a malformed message fails before anything
// changes), validation and execution run on the client's LocalKvStore view, and every failure
// becomes an error reply counted under kvpr_rejected_messages_total{reason}:
//   malformed     not a Cap'n Proto message, truncated, oversized, wrong frame count
//   unknown_type  a union member this build does not know (kind unimplemented)
//   expired       past deadlineUnixMs
//   invalid       unknown client or sequence, out-of-range fields, a bad shape
// A full store is not a bad message: `overloaded` replies count as allocation failures instead.
#include <capnp/message.h>

#include <string_view>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "service_impl.h"

namespace kvpr::kvstore {
namespace {

using Which = wire::KvRequest::Which;

constexpr std::int64_t kMaxLayers = 1 << 16;
constexpr std::int64_t kMaxWidth = 1 << 24;

struct Request {
  std::uint64_t id = 0;
  std::uint64_t deadline_unix_ms = 0;
  std::uint64_t client = 0;
  Which which = Which::HEARTBEAT;
  bool known = true;  // which is a member this build knows
  // register
  std::string name;
  StoreShape shape;
  // sequence requests
  SeqId seq = 0;
  std::int64_t n_tokens = 0;
  std::int64_t layer = 0;
  Part part = Part::act;
  std::int64_t t0 = 0;
  std::int64_t t1 = 0;
};

std::string_view type_name(Which which) {
  switch (which) {
    case Which::REGISTER:
      return "register";
    case Which::HEARTBEAT:
      return "heartbeat";
    case Which::UNREGISTER:
      return "unregister";
    case Which::OPEN:
      return "open";
    case Which::RESERVE:
      return "reserve";
    case Which::COMMIT:
      return "commit";
    case Which::LOCATE:
      return "locate";
    case Which::LENGTH:
      return "length";
    case Which::TRUNCATE:
      return "truncate";
    case Which::FREE:
      return "free";
    case Which::STATS:
      return "stats";
  }
  return "unknown";
}

// Reads the whole request; throws Error(failed, "malformed message: ...") or, for an unknown
// enum value, Error(failed, "kvstore: unknown ...").
void decode(wire::KvRequest::Reader in, Request& out) {
  out.deadline_unix_ms = in.getDeadlineUnixMs();
  out.client = in.getClient();
  out.which = in.which();
  switch (out.which) {
    case Which::REGISTER: {
      const auto reg = in.getRegister();
      out.name = reg.getName().cStr();
      out.shape = wire_adapter::get_shape(reg.getShape());
      break;
    }
    case Which::HEARTBEAT:
    case Which::UNREGISTER:
    case Which::OPEN:
    case Which::STATS:
      break;
    case Which::RESERVE:
    case Which::COMMIT:
    case Which::TRUNCATE: {
      const auto st = out.which == Which::RESERVE  ? in.getReserve()
                      : out.which == Which::COMMIT ? in.getCommit()
                                                   : in.getTruncate();
      out.seq = st.getSeq();
      out.n_tokens = st.getNTokens();
      break;
    }
    case Which::LOCATE: {
      const auto loc = in.getLocate();
      out.seq = loc.getSeq();
      out.layer = loc.getLayer();
      out.part = wire_adapter::from_wire(loc.getPart());
      out.t0 = loc.getT0();
      out.t1 = loc.getT1();
      break;
    }
    case Which::LENGTH:
      out.seq = in.getLength();
      break;
    case Which::FREE:
      out.seq = in.getFree();
      break;
    default:
      out.known = false;
  }
}

void check_shape(const StoreShape& shape) {
  if (shape.n_layers <= 0 || shape.n_layers > kMaxLayers || shape.h <= 0 || shape.h > kMaxWidth ||
      shape.h_kv <= 0 || shape.h_kv > kMaxWidth) {
    fail("kvstore: invalid shape (layers ", shape.n_layers, ", h ", shape.h, ", h_kv ", shape.h_kv,
         ")");
  }
}

}  // namespace

zmq::message_t KvStoreService::Impl::error_reply(std::uint64_t id, const Error& error) {
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::KvReply>();
  reply.setId(id);
  net::set_error(reply.initError(), error);
  return net::encode(message);
}

zmq::message_t KvStoreService::Impl::handle(const void* data, std::size_t size) {
  Request req;
  // 1. Decode: the id first, so even a message that breaks later gets an addressed reply.
  try {
    net::Frame frame(data, size);
    net::decode_guard([&] { req.id = frame.root<wire::KvRequest>().getId(); });
    net::decode_guard([&] { decode(frame.root<wire::KvRequest>(), req); });
  } catch (const Error& e) {
    // Bytes that are no message are malformed; a message with a value this build does not know
    // (an enum member) is invalid.
    reject(std::string_view(e.what()).starts_with("malformed") ? "malformed" : "invalid");
    return error_reply(req.id, e);
  } catch (const std::exception& e) {
    reject("malformed");
    return error_reply(req.id, Error(ErrorKind::failed, str("malformed message: ", e.what())));
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

  // 2. Execute and encode.
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::KvReply>();
  reply.setId(req.id);
  std::lock_guard lock(mutex);
  ++requests;
  try {
    if (req.which == Which::REGISTER) {
      check_shape(req.shape);
      const std::size_t token_bytes =
          static_cast<std::size_t>(req.shape.h + 2 * req.shape.h_kv) * size_of(req.shape.dtype);
      if (token_bytes > pool->page_bytes()) {
        fail("kvstore: one token of one layer takes ", token_bytes, " bytes, more than a page of ",
             pool->page_bytes(), " bytes");
      }
      req.shape.block_tokens = static_cast<std::int64_t>(pool->page_bytes() / token_bytes);
      auto store = std::make_unique<LocalKvStore>(req.shape, *pool);
      const std::uint64_t id = next_client++;
      clients[id] = Client{req.name, std::move(store), net::Clock::now() + options.lease};
      auto out = reply.initRegistered();
      out.setClient(id);
      out.setBlockTokens(req.shape.block_tokens);
      out.setLeaseMs(static_cast<std::uint64_t>(options.lease.count()));
      out.setArenaAddress(reinterpret_cast<std::uintptr_t>(memory.address()));
      out.setArenaBytes(pool->arena_bytes());
      out.setRkey(wire_adapter::as_data(rkey.bytes()));
      out.setUcxAddress(wire_adapter::as_data(worker_address.bytes()));
      refresh_gauges_locked();
      return net::encode(message);
    }
    if (req.which == Which::STATS) {
      auto out = reply.initStats();
      std::uint64_t n_sequences = 0;
      for (const auto& [id, client] : clients) n_sequences += client.store->stats().sequences;
      out.setCapacityBytes(pool->capacity_bytes());
      out.setUsedBytes(pool->used_bytes());
      out.setSequences(n_sequences);
      out.setClients(clients.size());
      out.setLookups(lookups);
      out.setAllocationFailures(pool->allocation_failures());
      out.setLeaseExpiries(lease_expiries);
      out.setRejectedMessages(rejected.load());
      // Anyone may ask for the daemon's stats; a registered client also renews its lease.
      if (auto it = clients.find(req.client); it != clients.end()) {
        it->second.lease_end = net::Clock::now() + options.lease;
      }
      return net::encode(message);
    }
    auto found = clients.find(req.client);
    if (found == clients.end()) {
      raise(ErrorKind::disconnected, "kvstore: unknown client ", req.client,
            " (never registered, lease expired or the daemon restarted): register again");
    }
    found->second.lease_end = net::Clock::now() + options.lease;
    LocalKvStore& store = *found->second.store;
    switch (req.which) {
      case Which::HEARTBEAT:
        reply.setOk();
        break;
      case Which::UNREGISTER:
        clients.erase(found);
        reply.setOk();
        break;
      case Which::OPEN:
        reply.setOpened(store.open());
        break;
      case Which::RESERVE: {
        const Reservation r = store.reserve_blocks(req.seq, req.n_tokens);
        auto out = reply.initReserved();
        out.setReservedTokens(r.reserved_tokens);
        out.setFirstBlock(r.first_block);
        out.setBlocksPerLayer(r.blocks_per_layer);
        auto offsets = out.initOffsets(static_cast<unsigned>(r.offsets.size()));
        for (unsigned i = 0; i < r.offsets.size(); ++i) offsets.set(i, r.offsets[i]);
        break;
      }
      case Which::COMMIT:
        store.commit(req.seq, req.n_tokens);
        reply.setOk();
        break;
      case Which::LOCATE: {
        const auto spans = store.locate(req.seq, req.layer, req.part, req.t0, req.t1);
        ++lookups;
        instruments->lookups.Increment();
        auto out = reply.initSpans(static_cast<unsigned>(spans.size()));
        for (unsigned i = 0; i < spans.size(); ++i) {
          out[i].setOffset(pool->offset_of(spans[i].data).value_or(0));
          out[i].setT0(spans[i].t0);
          out[i].setNTokens(spans[i].n_tokens);
        }
        break;
      }
      case Which::LENGTH:
        reply.setLength(store.length(req.seq));
        break;
      case Which::TRUNCATE:
        store.truncate(req.seq, req.n_tokens);
        reply.setOk();
        break;
      case Which::FREE:
        store.free(req.seq);
        reply.setOk();
        break;
      case Which::REGISTER:
      case Which::STATS:
        break;  // answered above
    }
    refresh_gauges_locked();
    return net::encode(message);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::overloaded) {
      instruments->allocation_failures.Increment();
    } else {
      reject("invalid");
    }
    return error_reply(req.id, e);
  } catch (const std::exception& e) {
    return error_reply(req.id, Error(ErrorKind::failed, str("kvstore: ", e.what())));
  }
}

}  // namespace kvpr::kvstore
