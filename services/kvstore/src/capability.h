// Client and sequence handles of the kvstore protocol: 128 random bits each (getrandom(2), the
// kernel's CSPRNG), so a handle cannot be guessed from another one or from the order of
// registrations. A handle is a capability in name only: the daemon also checks that a sequence
// belongs to the request's client and the client to the request's principal. Private to the
// library; the wire form is kvstore.capnp's Handle.
#pragma once

#include <cstdint>

#include "schemas/kvstore.capnp.h"

namespace kvpr::kvstore {

struct Capability {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;

  bool empty() const { return hi == 0 && lo == 0; }  // "none": never handed out
  bool operator==(const Capability&) const = default;
  bool operator<(const Capability& o) const { return hi != o.hi ? hi < o.hi : lo < o.lo; }
};

// 128 bits from getrandom(2), never empty. Throws kvpr::Error(failed) if the kernel refuses.
Capability random_capability();

inline Capability get_capability(wire::Handle::Reader in) {
  return {in.getHi(), in.getLo()};
}

inline void set_capability(wire::Handle::Builder out, Capability c) {
  out.setHi(c.hi);
  out.setLo(c.lo);
}

}  // namespace kvpr::kvstore
