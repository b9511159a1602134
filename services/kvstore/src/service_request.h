// A kvstore request as read off the wire (service_handle.cpp's first stage): every field of the
// Cap'n Proto message copied into a plain struct, so that a malformed message fails before any
// state changes. Nothing here checks a value; the handlers do.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "capability.h"
#include "kvstore_wire.h"

namespace kvpr::kvstore {

using Which = wire::KvRequest::Which;

// Sequences in one reserveBatch or commitBatch; a longer list is not even read (and is refused).
inline constexpr std::size_t kMaxBatch = 4096;

// A request as read off the wire, before any check.
struct Request {
  std::uint64_t id = 0;
  std::uint64_t deadline_unix_ms = 0;
  Capability client;
  std::string_view principal;  // of the peer (not on the wire): empty when not authenticated
  Which which = Which::HEARTBEAT;
  bool known = true;  // which is a member this build knows
  // register
  std::string name;
  std::uint32_t host_threads = 0;
  std::int64_t n_layers = 0, h = 0, h_kv = 0;
  wire::DType dtype = wire::DType::F32;
  // sequence requests
  Capability seq;
  std::vector<Capability> seqs;  // batches
  std::size_t batch_size = 0;
  std::int64_t n_tokens = 0;
  std::int64_t layer = 0;
  wire::Part part = wire::Part::ACT;
  std::int64_t t0 = 0;
  std::int64_t t1 = 0;
};

// The request type's name in replies, logs and metrics ("reserve_batch"), "unknown" for a member
// this build does not know.
std::string_view type_name(Which which);

// Reads the whole request; run inside decode_guard (Cap'n Proto's complaints become
// MalformedMessage). Checks nothing.
void decode(wire::KvRequest::Reader in, Request& out);

}  // namespace kvpr::kvstore
