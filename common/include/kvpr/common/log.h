// Diagnostics of services, daemons and libraries: one line on stderr per event with a timestamp,
// the process name and a level, written by spdlog (any thread may log; lines never interleave):
//   [2026-12-03 16:20:01.123] [kvpr-worker] [warning] worker: request 7 failed: ...
// Not for a command's own output: results stay on stdout and a CLI's one-line "error: ..." stays
// as it is. Messages are built like fail()'s, from anything with an operator<<, and only when
// their level is enabled. spdlog itself stays out of this header (it is slow to compile).
//
// The level is info until set: by init() from a --log-level flag, else from the KVPR_LOG_LEVEL
// environment variable. Levels: trace, debug, info, warn, error, critical, off.
#pragma once

#include <string_view>

#include "kvpr/common/error.h"

namespace kvpr::log {

enum class Level { trace, debug, info, warn, error, critical, off };

// The level a name stands for; throws kvpr::Error naming it and the valid names otherwise.
Level parse_level(std::string_view name);

// Names the process in every line and sets the level: `level` when not empty, else
// KVPR_LOG_LEVEL when set, else info. Throws as parse_level does. Call from main() before other
// threads log; a process that never calls it logs as "kvpr" at KVPR_LOG_LEVEL or info.
void init(std::string_view process, std::string_view level = {});

void set_level(Level level);
bool enabled(Level level);
void write(Level level, std::string_view message);

template <typename... Args>
void debug(const Args&... args) {
  if (enabled(Level::debug)) write(Level::debug, str(args...));
}
template <typename... Args>
void info(const Args&... args) {
  if (enabled(Level::info)) write(Level::info, str(args...));
}
template <typename... Args>
void warn(const Args&... args) {
  if (enabled(Level::warn)) write(Level::warn, str(args...));
}
template <typename... Args>
void error(const Args&... args) {
  if (enabled(Level::error)) write(Level::error, str(args...));
}

}  // namespace kvpr::log
