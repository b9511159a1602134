// libFuzzer target: the planner service's request handler without sockets (decode, validate,
// plan or store a profile, encode the reply). Every input must give a reply — never a crash.
#include <cstddef>
#include <cstdint>
#include <zmq.hpp>

#include "kvpr/planner/planner_service.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static zmq::context_t context;
  static kvpr::planner::PlannerService service(context, {});
  (void)service.handle(data, size);  // the reply itself is checked by the wire tests
  return 0;
}
