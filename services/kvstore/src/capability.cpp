#include "capability.h"

#include <sys/random.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "kvpr/common/error.h"

namespace kvpr::kvstore {

Capability random_capability() {
  Capability c;
  while (c.empty()) {
    std::uint64_t words[2] = {0, 0};
    auto* bytes = reinterpret_cast<unsigned char*>(words);
    std::size_t got = 0;
    while (got < sizeof words) {  // blocks only until the pool is seeded at boot
      const ssize_t n = getrandom(bytes + got, sizeof words - got, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("kvstore: getrandom failed: ", std::strerror(errno));
      }
      got += static_cast<std::size_t>(n);
    }
    c = {words[0], words[1]};
  }
  return c;
}

}  // namespace kvpr::kvstore
