// The process's one logger: an spdlog logger with a single stderr sink (never stdout, which
// carries commands' results), created on first use so that libraries can log before or without
// init(). init() replaces it, once, from main(), before other threads exist.
#include "kvpr/common/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <memory>
#include <string>

namespace kvpr::log {
namespace {

constexpr const char* kPattern = "[%Y-%m-%d %H:%M:%S.%e] [%n] [%l] %v";
constexpr std::string_view kNames[] = {"trace", "debug",    "info", "warn",
                                       "error", "critical", "off"};

spdlog::level::level_enum to_spdlog(Level level) {
  return static_cast<spdlog::level::level_enum>(static_cast<int>(level));
}

Level level_from_env() {
  const char* env = std::getenv("KVPR_LOG_LEVEL");
  if (env == nullptr || *env == '\0') return Level::info;
  try {
    return parse_level(env);
  } catch (const Error&) {
    return Level::info;  // a bad variable must not stop a library; init() reports it
  }
}

std::shared_ptr<spdlog::logger> make_logger(std::string_view process, Level level) {
  auto logger = std::make_shared<spdlog::logger>(std::string(process),
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern(kPattern);
  logger->set_level(to_spdlog(level));
  logger->flush_on(spdlog::level::trace);  // every line reaches the log file at once
  return logger;
}

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger("kvpr", level_from_env());
  return instance;
}

}  // namespace

static_assert(static_cast<int>(Level::off) == spdlog::level::off);

Level parse_level(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kNames); ++i) {
    if (name == kNames[i]) return static_cast<Level>(i);
  }
  fail("log level '", name, "' is not one of trace, debug, info, warn, error, critical, off");
}

void init(std::string_view process, std::string_view level) {
  Level chosen = Level::info;
  if (!level.empty()) {
    chosen = parse_level(level);
  } else if (const char* env = std::getenv("KVPR_LOG_LEVEL"); env != nullptr && *env != '\0') {
    try {
      chosen = parse_level(env);
    } catch (const Error& e) {
      fail("KVPR_LOG_LEVEL: ", e.what());
    }
  }
  logger() = make_logger(process, chosen);
}

void set_level(Level level) {
  logger()->set_level(to_spdlog(level));
}

bool enabled(Level level) {
  return logger()->should_log(to_spdlog(level));
}

void write(Level level, std::string_view message) {
  logger()->log(to_spdlog(level), "{}", message);
}

}  // namespace kvpr::log
