// libFuzzer target: the kvstore daemon's request handler without sockets (decode, validate, act on
// the page pool, encode the reply). Every input must give a reply — never a crash, and never a
// change to memory the request does not own.
#include <cstddef>
#include <cstdint>
#include <zmq.hpp>

#include "kvpr/kvstore/kv_store_service.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static zmq::context_t context;
  static kvpr::kvstore::KvStoreService service(context, [] {
    kvpr::kvstore::KvStoreServiceOptions o;
    o.capacity_bytes = 64ull << 20;
    o.page_bytes = 64 << 10;
    return o;
  }());
  (void)service.handle(data, size);  // the reply itself is checked by the wire tests
  return 0;
}
