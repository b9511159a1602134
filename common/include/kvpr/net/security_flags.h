// The command-line flags of authentication, the same on every daemon and client (security.h).
#pragma once

#include <CLI/CLI.hpp>

#include "kvpr/net/security.h"

namespace kvpr::net {

inline void add_security_flags(CLI::App& app, SecurityOptions& options) {
  app.add_option("--keys", options.keys,
                 "CURVE key folder (kvpr keygen --out DIR; kvpr up makes RUN/keys): encrypt and "
                 "authenticate every ZeroMQ socket")
      ->envname("KVPR_KEYS");
  app.add_flag("--insecure", options.insecure,
               "Listen on a non-loopback address without authentication (say so on purpose)");
}

}  // namespace kvpr::net
