#include "deploy.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/net/security.h"
#include "kvpr/worker/profiler.h"

extern char** environ;

namespace kvpr::cli {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The services are installed next to the kvpr executable (KVPR_BIN_DIR overrides).
fs::path binary(const std::string& name) {
  fs::path dir;
  if (const char* env = std::getenv("KVPR_BIN_DIR")) {
    dir = env;
  } else {
    dir = fs::read_symlink("/proc/self/exe").parent_path();
  }
  fs::path path = dir / name;
  if (!fs::exists(path)) fail("cannot find ", name, " at ", path.string(), " (set KVPR_BIN_DIR)");
  return path;
}

struct Started {
  std::string name;
  std::string role;
  pid_t pid = -1;
  fs::path ready_file;
  fs::path log;
};

// Starts `argv` detached (its own session, stdin from /dev/null, stdout/stderr to `log`).
pid_t spawn(const std::vector<std::string>& argv, const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) fail("cannot start ", argv[0], ": ", std::strerror(rc));
  return pid;
}

bool alive(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, WNOHANG) == pid) return false;  // our child and it exited
  return kill(pid, 0) == 0;
}

// When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); nullopt when there is
// no such process. With the pid it names one process: a pid reused by another has another start.
std::optional<std::uint64_t> start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  // Field 2, the command, is in parentheses and may hold spaces and ')': fields 3.. follow the
  // last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int i = 3; i < 22 && fields >> field; ++i) {
  }
  std::uint64_t ticks = 0;
  if (!(fields >> ticks)) return std::nullopt;
  return ticks;
}

std::string tail(const fs::path& log) {
  std::ifstream in(log);
  std::string line;
  std::string last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return last.empty() ? "(no output)" : last;
}

nlohmann::json wait_ready(const Started& s, Clock::time_point deadline) {
  for (;;) {
    if (fs::exists(s.ready_file)) {
      std::ifstream in(s.ready_file);
      return nlohmann::json::parse(in);
    }
    if (!alive(s.pid)) fail(s.name, " exited before it was ready: ", tail(s.log));
    if (Clock::now() > deadline) fail(s.name, " was not ready in time; its log: ", s.log.string());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void stop_all(const std::vector<pid_t>& pids, double timeout_s) {
  for (pid_t pid : pids) kill(pid, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_s));
  for (pid_t pid : pids) {
    while (alive(pid) && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (alive(pid)) {
      std::fprintf(stderr, "kvpr: process %d did not stop in %.0f s; killing it\n", pid, timeout_s);
      kill(pid, SIGKILL);
    }
  }
}

std::string flag(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

int up_command(const UpOptions& o) {
  if (o.workers < 1) fail("--workers must be at least 1, got ", o.workers);
  if (o.planners < 1) fail("--planners must be at least 1, got ", o.planners);
  if (o.gateways < 0) fail("--gateways must be at least 0, got ", o.gateways);
  if (!fs::exists(fs::path(o.model) / "config.json")) {
    fail("--model: no config.json in '", o.model, "'");
  }
  const fs::path dir(o.model);
  const bool tokenizer = fs::exists(dir / "tokenizer.json") ||
                         (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt"));
  if (o.gateways > 0 && !tokenizer) {
    fail("--model '", o.model,
         "' has no tokenizer (tokenizer.json, or vocab.json + merges.txt), which a gateway needs; "
         "pass --gateways 0 to deploy without one");
  }
  fs::path run_dir = o.run_dir;
  if (run_dir.empty()) {
    std::string templ = (fs::temp_directory_path() / "kvpr-XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) fail("cannot create a run folder in /tmp");
    run_dir = templ;
  }
  fs::create_directories(run_dir);
  run_dir = fs::canonical(run_dir);
  if (fs::exists(run_dir / "deployment.json")) {
    fail("--run-dir '", run_dir.string(), "' holds a running deployment; kvpr down it first");
  }
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.ready_timeout_s));
  const fs::path model = fs::absolute(o.model);
  const fs::path keys = run_dir / "keys";
  if (!o.insecure) {
    std::vector<std::string> names{"client"};
    for (int i = 0; i < o.workers; ++i) names.push_back("worker-" + std::to_string(i));
    for (int i = 0; i < o.gateways; ++i) names.push_back("gateway-" + std::to_string(i));
    net::keygen(keys, names);
  }
  std::vector<Started> started;
  nlohmann::json services = nlohmann::json::array();
  try {
    auto launch = [&](const std::string& name, const std::string& role,
                      std::vector<std::string> argv) {
      Started s{name, role, -1, run_dir / (name + ".ready.json"), run_dir / (name + ".log")};
      fs::remove(s.ready_file);
      argv.insert(argv.end(), {"--name", name, "--ready-file", s.ready_file.string()});
      if (!o.insecure) argv.insert(argv.end(), {"--keys", keys.string()});
      // A gateway serves /metrics on its HTTP port; the others on a port of their own.
      if (role != "gateway") argv.insert(argv.end(), {"--metrics-port", "0"});
      s.pid = spawn(argv, s.log);
      started.push_back(s);
      auto ready = wait_ready(started.back(), deadline);
      services.push_back(nlohmann::json{{"name", name},
                                        {"role", role},
                                        {"pid", s.pid},
                                        {"start_time", start_time(s.pid).value_or(0)},
                                        {"endpoint", ready.at("endpoint")},
                                        {"metrics_port", ready.at("metrics_port")},
                                        {"log", s.log.string()}});
      return ready.at("endpoint").template get<std::string>();
    };
    std::vector<std::string> kvstore_argv{
        binary("kvpr-kvstore").string(),  "--listen",   "tcp://127.0.0.1:0",       "--capacity",
        std::to_string(o.capacity_bytes), "--lease-ms", std::to_string(o.lease_ms)};
    if (o.backend.backend != "cpu") {
      // A store block is one host→device copy per part: on a GPU its pages hold the tokens
      // worker::store_block_tokens asks for (the 256 KiB default would make 10-token blocks, 80 KiB
      // copies, of an OPT-6.7B-wide model).
      const ModelConfig c = Checkpoint(model.string()).config();
      const auto token_bytes = static_cast<std::uint64_t>(c.h + 2 * c.h_kv()) * size_of(c.dtype);
      const auto tokens =
          static_cast<std::uint64_t>(worker::store_block_tokens(o.backend.backend, c));
      const std::uint64_t page = (tokens * token_bytes + 4095) / 4096 * 4096;
      kvstore_argv.insert(kvstore_argv.end(), {"--page-bytes", std::to_string(page)});
    }
    const std::string kvstore = launch("kvstore", "kvstore", kvstore_argv);
    std::vector<std::string> planners;
    planners.reserve(static_cast<std::size_t>(o.planners));
    for (int i = 0; i < o.planners; ++i) {
      planners.push_back(
          launch("planner-" + std::to_string(i), "planner",
                 {binary("kvpr-planner").string(), "--listen", "tcp://127.0.0.1:0"}));
    }
    std::string connect;
    for (int i = 0; i < o.workers; ++i) {
      std::vector<std::string> argv{binary("kvpr-worker").string(),
                                    "--model",
                                    model.string(),
                                    "--listen",
                                    "tcp://127.0.0.1:0",
                                    "--kvstore",
                                    kvstore,
                                    "--backend",
                                    o.backend.backend,
                                    "--emulate-link-gbps",
                                    flag(o.backend.emulate_link_gbps),
                                    "--emulate-link-latency-us",
                                    flag(o.backend.emulate_link_latency_us),
                                    "--threads",
                                    std::to_string(o.backend.threads),
                                    "--compute-dtype",
                                    o.backend.compute_dtype,
                                    "--profile",
                                    o.profile,
                                    "--max-batch",
                                    std::to_string(o.max_batch),
                                    "--max-queue",
                                    std::to_string(o.max_queue),
                                    "--max-prefill-tokens-per-step",
                                    std::to_string(o.max_prefill_tokens),
                                    "--admit",
                                    o.admit};
      for (const auto& p : planners) argv.insert(argv.end(), {"--planner", p});
      const std::string endpoint = launch("worker-" + std::to_string(i), "worker", argv);
      connect += (connect.empty() ? "" : ",") + endpoint;
    }
    std::string http;
    for (int i = 0; i < o.gateways; ++i) {
      std::vector<std::string> argv{binary("kvpr-gateway").string(),
                                    "--model",
                                    model.string(),
                                    "--host",
                                    "127.0.0.1",
                                    "--port",
                                    "0"};
      for (std::size_t pos = 0; pos < connect.size();) {
        const auto comma = std::min(connect.find(',', pos), connect.size());
        argv.insert(argv.end(), {"--worker", connect.substr(pos, comma - pos)});
        pos = comma + 1;
      }
      const std::string url = launch("gateway-" + std::to_string(i), "gateway", argv);
      if (http.empty()) http = url;
    }
    nlohmann::json out{{"connect", connect}, {"run_dir", run_dir.string()}, {"services", services}};
    if (!o.insecure) out["keys"] = keys.string();  // clients: --keys it (or KVPR_KEYS)
    if (!http.empty()) out["http"] = http;
    std::ofstream(run_dir / "deployment.json") << out.dump(2) << "\n";
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (...) {
    std::vector<pid_t> pids;
    pids.reserve(started.size());
    for (const auto& child : started) pids.push_back(child.pid);
    std::reverse(pids.begin(), pids.end());  // stop in the reverse order of start
    stop_all(pids, 5);
    throw;
  }
}

int down_command(const DownOptions& o) {
  const fs::path file = fs::path(o.run_dir) / "deployment.json";
  if (!fs::exists(file)) fail("--run-dir: no deployment.json in '", o.run_dir, "'");
  nlohmann::json deployment;
  try {
    std::ifstream in(file);
    deployment = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail(file.string(), " is not a deployment description: ", e.what());
  }
  // Gateways drain first (their streams need the workers), then workers (they still need the
  // store and planners), the kvstore goes last.
  // A pid is signalled only while it still names the process `up` started (same start time): a
  // service that exited may have left its pid to an unrelated process.
  std::size_t total = 0;
  std::size_t stopped = 0;
  std::size_t reused = 0;
  for (const char* role : {"gateway", "worker", "planner", "kvstore"}) {
    std::vector<pid_t> running;
    for (const auto& s : deployment.at("services")) {
      if (s.at("role") != role) continue;
      ++total;
      const auto pid = s.at("pid").get<pid_t>();
      const auto now = start_time(pid);
      if (!now || !alive(pid)) continue;
      const auto recorded = s.value("start_time", std::uint64_t{0});
      if (*now != recorded) {
        std::fprintf(
            stderr, "kvpr: pid %d is no longer %s (started at tick %llu, not %llu); left alone\n",
            static_cast<int>(pid), s.at("name").get<std::string>().c_str(),
            static_cast<unsigned long long>(*now), static_cast<unsigned long long>(recorded));
        ++reused;
        continue;
      }
      running.push_back(pid);
    }
    stop_all(running, o.timeout_s);
    stopped += running.size();
  }
  fs::remove(file);
  std::printf("stopped %zu of %zu services (%zu had already exited", stopped, total,
              total - stopped - reused);
  if (reused > 0) std::printf("; %zu pid(s) now another process's, left alone", reused);
  std::printf(")\n");
  return 0;
}

}  // namespace kvpr::cli
