// Helpers for the tests that speak the kvstore protocol directly: handles (the daemon's 128-bit
// capabilities) as plain values, replies decoded into a flat struct, messages as aligned words.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kvpr/net/wire.h"
#include "schemas/kvstore.capnp.h"

namespace kvpr::kvstore::testing {

using Handle = std::pair<std::uint64_t, std::uint64_t>;  // {hi, lo}

inline Handle get_handle(wire::Handle::Reader in) {
  return {in.getHi(), in.getLo()};
}

inline void set_handle(wire::Handle::Builder out, Handle h) {
  out.setHi(h.first);
  out.setLo(h.second);
}

struct Reply {
  bool error = false;
  std::uint64_t id = 0;
  wire::ErrorKind kind = wire::ErrorKind::FAILED;
  std::string reason;
  wire::KvReply::Which which = wire::KvReply::Which::OK;
};

inline Reply summarize(wire::KvReply::Reader reply) {
  Reply r;
  r.id = reply.getId();
  r.which = reply.which();
  r.error = reply.isError();
  if (r.error) {
    r.kind = reply.getError().getKind();
    r.reason = reply.getError().getReason().cStr();
  }
  return r;
}

inline Reply decode(const void* data, std::size_t size) {
  net::Frame frame(data, size);
  return summarize(frame.root<wire::KvReply>());
}

// A flat message as copyable, word-aligned storage (capnp::word is not copyable under clang).
inline std::vector<std::uint64_t> encode_words(capnp::MessageBuilder& message) {
  const auto flat = capnp::messageToFlatArray(message);
  const auto bytes = flat.asBytes();
  std::vector<std::uint64_t> words(flat.size());
  std::memcpy(words.data(), bytes.begin(), bytes.size());
  return words;
}

}  // namespace kvpr::kvstore::testing
