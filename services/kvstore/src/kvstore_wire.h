// The kvstore's wire adapter helpers: conversions between kvpr's store types and the generated
// kvstore.capnp types, shared by the service and RemoteKvStore (the only two places that touch
// the generated types). Conversions from the wire are checked: an enum value this build does not
// know throws kvpr::Error(failed) naming it.
#pragma once

#include <capnp/message.h>

#include <cstddef>
#include <span>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "schemas/kvstore.capnp.h"

namespace kvpr::kvstore::wire_adapter {

inline wire::DType to_wire(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return wire::DType::F32;
    case DType::f16:
      return wire::DType::F16;
    case DType::bf16:
      return wire::DType::BF16;
  }
  return wire::DType::F32;
}

inline DType from_wire(wire::DType dtype) {
  switch (dtype) {
    case wire::DType::F32:
      return DType::f32;
    case wire::DType::F16:
      return DType::f16;
    case wire::DType::BF16:
      return DType::bf16;
  }
  fail("kvstore: unknown dtype ", static_cast<int>(dtype));
}

inline wire::Part to_wire(Part part) {
  switch (part) {
    case Part::act:
      return wire::Part::ACT;
    case Part::k:
      return wire::Part::K;
    case Part::v:
      return wire::Part::V;
  }
  return wire::Part::ACT;
}

inline Part from_wire(wire::Part part) {
  switch (part) {
    case wire::Part::ACT:
      return Part::act;
    case wire::Part::K:
      return Part::k;
    case wire::Part::V:
      return Part::v;
  }
  fail("kvstore: unknown part ", static_cast<int>(part));
}

inline void set_shape(wire::StoreShape::Builder out, const StoreShape& shape) {
  out.setNLayers(shape.n_layers);
  out.setH(shape.h);
  out.setHKv(shape.h_kv);
  out.setDtype(to_wire(shape.dtype));
}

inline StoreShape get_shape(wire::StoreShape::Reader in) {
  StoreShape shape;
  shape.n_layers = in.getNLayers();
  shape.h = in.getH();
  shape.h_kv = in.getHKv();
  shape.dtype = from_wire(in.getDtype());
  return shape;
}

inline capnp::Data::Reader as_data(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()};
}

inline std::span<const std::byte> as_bytes(capnp::Data::Reader data) {
  return {reinterpret_cast<const std::byte*>(data.begin()), data.size()};
}

}  // namespace kvpr::kvstore::wire_adapter
