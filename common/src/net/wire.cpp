#include "kvpr/net/wire.h"

#include <kj/exception.h>

#include <cstring>

namespace kvpr::net {

zmq::message_t encode(capnp::MessageBuilder& message) {
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  return {bytes.begin(), bytes.size()};
}

Frame::Frame(const zmq::message_t& frame) : Frame(frame.data(), frame.size()) {}

Frame::Frame(const void* data, std::size_t size) {
  if (size > kMaxMessageBytes) {
    throw MalformedMessage(str(size, " bytes is over the limit of ", kMaxMessageBytes));
  }
  if (size == 0 || size % sizeof(capnp::word) != 0) {
    throw MalformedMessage(str(size, " bytes is not a whole number of 8-byte words"));
  }
  words_ = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
  std::memcpy(words_.begin(), data, size);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 2 * words_.size() + 1024;  // no amplification past 2x
  options.nestingLimit = 16;
  decode_guard([&] { reader_ = kj::heap<capnp::FlatArrayMessageReader>(words_, options); });
}

void decode_guard(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kj::Exception& e) {
    std::string what = e.getDescription().cStr();
    if (const auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    throw MalformedMessage(what);
  }
}

wire::ErrorKind to_wire(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::failed:
      return wire::ErrorKind::FAILED;
    case ErrorKind::overloaded:
      return wire::ErrorKind::OVERLOADED;
    case ErrorKind::disconnected:
      return wire::ErrorKind::DISCONNECTED;
    case ErrorKind::unimplemented:
      return wire::ErrorKind::UNIMPLEMENTED;
    case ErrorKind::permission_denied:
      return wire::ErrorKind::PERMISSION_DENIED;
  }
  return wire::ErrorKind::FAILED;
}

ErrorKind from_wire(wire::ErrorKind kind) {
  switch (kind) {
    case wire::ErrorKind::FAILED:
      return ErrorKind::failed;
    case wire::ErrorKind::OVERLOADED:
      return ErrorKind::overloaded;
    case wire::ErrorKind::DISCONNECTED:
      return ErrorKind::disconnected;
    case wire::ErrorKind::UNIMPLEMENTED:
      return ErrorKind::unimplemented;
    case wire::ErrorKind::PERMISSION_DENIED:
      return ErrorKind::permission_denied;
  }
  return ErrorKind::failed;  // an enum value from a newer peer
}

void set_error(wire::Error::Builder out, const Error& error) {
  out.setKind(to_wire(error.kind()));
  out.setReason(error.what());
}

void throw_error(wire::Error::Reader error, const std::string& peer) {
  raise(from_wire(error.getKind()), peer, ": ", error.getReason().cStr());
}

}  // namespace kvpr::net
