// One Cap'n Proto message per ZeroMQ frame: encoding, decoding with limits, and the conversion of
// kvpr::Error to and from the wire's Error struct. Generated schema types are touched only in each
// service's wire adapter; this header is the codec they share.
//
// Decoding never trusts the bytes: a frame that is not a whole number of words, a bad segment
// table, or a pointer out of bounds becomes MalformedMessage (an Error of kind failed) — also
// when Cap'n Proto only notices while a field is read, which is why readers are used inside
// `decode_guard`.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include <cstddef>
#include <functional>
#include <string>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "schemas/common.capnp.h"

namespace kvpr::net {

// The error of bytes that are no valid message: a frame that does not parse, or a read that
// Cap'n Proto refuses. ErrorKind::failed with the text "malformed message: ..."; services tell it
// apart from other bad requests by its type (kvpr_rejected_messages_total{reason="malformed"}).
class MalformedMessage : public Error {
 public:
  explicit MalformedMessage(const std::string& detail)
      : Error(ErrorKind::failed, "malformed message: " + detail) {}
};

// Frames larger than this are answered with an error before any parsing.
inline constexpr std::size_t kMaxMessageBytes = 64u << 20;

zmq::message_t encode(capnp::MessageBuilder& message);

// A received frame copied into word-aligned memory (ZeroMQ gives no alignment guarantee), with a
// reader whose traversal and nesting limits bound what a hostile peer can make us walk.
class Frame {
 public:
  explicit Frame(const zmq::message_t& frame);
  explicit Frame(const void* data, std::size_t size);
  Frame(const Frame&) = delete;
  Frame& operator=(const Frame&) = delete;

  template <typename T>
  typename T::Reader root() {
    return reader_->getRoot<T>();
  }

 private:
  kj::Array<capnp::word> words_;
  kj::Own<capnp::FlatArrayMessageReader> reader_;
};

// Runs fn, turning Cap'n Proto's exceptions (malformed input, out-of-range reads) into
// MalformedMessage. A kvpr::Error that fn throws passes through unchanged.
void decode_guard(const std::function<void()>& fn);

wire::ErrorKind to_wire(ErrorKind kind);
ErrorKind from_wire(wire::ErrorKind kind);
void set_error(wire::Error::Builder out, const Error& error);
// Throws the kvpr::Error a reply carries, prefixed with the peer's name.
[[noreturn]] void throw_error(wire::Error::Reader error, const std::string& peer);

}  // namespace kvpr::net
