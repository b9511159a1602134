// libFuzzer target: the worker's request decoder, which every byte a client sends reaches first.
// Any input must end in a decoded request or a kvpr::Error — never a crash, hang or leak.
#include <cstddef>
#include <cstdint>

#include "kvpr/common/error.h"
#include "worker_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const kvpr::worker::wire_adapter::ModelLimits limits{512, 256};
  std::uint64_t id = 0;
  try {
    (void)kvpr::worker::wire_adapter::decode_request(data, size, limits, id);
  } catch (const kvpr::Error&) {
  }
  return 0;
}
