// The real kvpr-kvstore process: its command line, and a client that outlives it. When the daemon
// is killed, calls fail with ErrorKind::disconnected within the client's timeout (no hang), spans
// already handed out stay readable, and once a daemon listens on the same endpoint again the next
// open() registers anew.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "../slowdown.h"
#include "kvpr/common/error.h"
#include "kvpr/kvstore/remote_kv_store.h"
#include "kvpr/net/security.h"
#include "kvstore_test_support.h"

namespace kvpr::kvstore {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::count_bad_rows;
using testing::fill;
using testing::small_shape;

// A kvpr-kvstore child process; killed (SIGKILL) when the object goes away.
class Daemon {
 public:
  Daemon(const std::string& listen, const std::vector<std::string>& extra = {}) {
    ready_ = std::filesystem::temp_directory_path() /
             ("kvstore-ready-" + std::to_string(getpid()) + "-" + std::to_string(++count_));
    std::filesystem::remove(ready_);
    std::vector<std::string> args = {
        KVPR_KVSTORE_BIN, "--listen", listen,         "--capacity",   "16M", "--page-bytes", "4K",
        "--metrics-port", "-1",       "--ready-file", ready_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = spawn(args, true);
  }
  ~Daemon() { kill(); }

  // Waits for the ready file; returns the endpoint the daemon listens on.
  std::string wait_ready() {
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      std::ifstream in(ready_);
      if (in) {
        const auto j = nlohmann::json::parse(in);
        return j.at("endpoint").get<std::string>();
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    throw std::runtime_error("kvpr-kvstore did not become ready in 5 s");
  }

  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    std::filesystem::remove(ready_);
  }

  // Runs args to completion (stdout and stderr to /dev/null); returns the exit status.
  static int run(const std::vector<std::string>& args) {
    const pid_t pid = spawn(args, true);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  pid_t pid() const { return pid_; }

 private:
  static pid_t spawn(const std::vector<std::string>& args, bool quiet) {
    const pid_t pid = fork();
    if (pid == 0) {
      if (quiet) {
        const int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
      }
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return pid;
  }

  static inline int count_ = 0;
  std::filesystem::path ready_;
  pid_t pid_ = -1;
};

TEST(KvStoreDaemon, BadFlagsExitWithOne) {
  EXPECT_EQ(Daemon::run({KVPR_KVSTORE_BIN, "--capacity", "12X"}), 1);
  EXPECT_EQ(Daemon::run({KVPR_KVSTORE_BIN, "--bogus"}), 1);
  EXPECT_EQ(Daemon::run({KVPR_KVSTORE_BIN, "--lease-ms", "0"}), 1);
  EXPECT_EQ(Daemon::run({KVPR_KVSTORE_BIN, "--listen", "nonsense://x", "--capacity", "16M"}), 1);
  EXPECT_EQ(Daemon::run({KVPR_KVSTORE_BIN, "--help"}), 0);
}

TEST(KvStoreDaemon, SigtermDrainsAndExitsZero) {
  Daemon daemon("tcp://127.0.0.1:0");
  daemon.wait_ready();
  ::kill(daemon.pid(), SIGTERM);
  int status = 0;
  waitpid(daemon.pid(), &status, 0);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(KvStoreDaemon, ClientSurvivesADaemonRestart) {
  auto daemon = std::make_unique<Daemon>("tcp://127.0.0.1:0");
  const std::string endpoint = daemon->wait_ready();
  zmq::context_t context;
  RemoteKvStoreOptions options;
  options.endpoint = endpoint;
  options.timeout = kvpr::test_timing::slow(milliseconds(500));
  RemoteKvStore store(context, small_shape(), options);
  EXPECT_TRUE(store.zero_copy());
  const SeqId seq = store.open();
  store.reserve(seq, 10);
  fill(store, seq, 0, 10, 5);
  store.commit(seq, 10);
  const auto spans = store.locate(seq, 1, Part::k, 0, 10);

  daemon->kill();
  for (int call = 0; call < 2; ++call) {
    const auto t0 = Clock::now();
    try {
      if (call == 0) {  // past its blocks: a reserve the client cannot answer alone
        store.reserve(seq, 2 * store.shape().block_tokens);
      } else {
        store.open();
      }
      FAIL() << "a call succeeded with the daemon dead";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
    }
    EXPECT_LT(Clock::now() - t0, kvpr::test_timing::slow(milliseconds(1500)));
  }
  // Spans handed out before stay mapped (a copy in flight does not crash).
  EXPECT_EQ(reinterpret_cast<const float*>(spans[0].data)[1],
            testing::pattern(0, 1, Part::k, 1, 5));

  daemon = std::make_unique<Daemon>(endpoint);
  ASSERT_EQ(daemon->wait_ready(), endpoint);
  SeqId fresh = 0;
  const auto deadline = Clock::now() + kvpr::test_timing::slow(std::chrono::seconds(4));
  for (;;) {  // the client's socket reconnects with a back-off of up to 1 s
    try {
      fresh = store.open();
      break;
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
      ASSERT_LT(Clock::now(), deadline) << e.what();
    }
  }
  EXPECT_EQ(store.generation(), 2u);
  EXPECT_THROW(store.reserve(seq, 1), Error);  // the old sequence died with the old daemon
  EXPECT_THROW(store.length(seq), Error);
  store.reserve(fresh, 7);
  fill(store, fresh, 0, 7, 6);
  store.commit(fresh, 7);
  EXPECT_EQ(count_bad_rows(store, fresh, 0, 7, 6), 0);
  EXPECT_EQ(store.stats().sequences, 1u);
}

// Peak resident memory of a process (VmHWM), in bytes.
std::uint64_t peak_rss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// A legitimate client after (or during) an attack: register, write, read back, free.
void expect_served(zmq::context_t& context, const std::string& endpoint) {
  RemoteKvStoreOptions options;
  options.endpoint = endpoint;
  options.timeout = milliseconds(2000);
  RemoteKvStore store(context, small_shape(), options);
  const SeqId seq = store.open();
  store.reserve(seq, 10);
  fill(store, seq, 0, 10, 9);
  store.commit(seq, 10);
  EXPECT_EQ(count_bad_rows(store, seq, 0, 10, 9), 0);
  store.free(seq);
}

// The attacks of a peer that wants the daemon to hold memory, against the real process: a 250 MB
// frame, a message of 8 x 200 MB frames, and 300 sequences of a 4000-layer shape (and one of
// 65,536 layers). The daemon's peak resident memory grows by less than its 16 MiB capacity plus
// the socket's per-peer bound (64 messages of 1 MiB), and a client is served after each.
TEST(KvStoreDaemon, AttacksOnItsMemoryStayWithinTheBound) {
  Daemon daemon("tcp://127.0.0.1:0");
  const std::string endpoint = daemon.wait_ready();
  zmq::context_t context;
  expect_served(context, endpoint);
  const std::uint64_t before = peak_rss(daemon.pid());
#if defined(__SANITIZE_THREAD__)
  constexpr std::uint64_t kShadow = 8;  // TSan's shadow memory multiplies what the daemon touches
#else
  constexpr std::uint64_t kShadow = 1;
#endif
  constexpr std::uint64_t kBound = kShadow * ((16u << 20) + 64 * (1u << 20));
  auto growth = [&](const char* attack) {
    const std::uint64_t grown = peak_rss(daemon.pid()) - before;
    std::printf("%s: the daemon's peak resident memory grew %.1f MiB (bound %.0f MiB)\n", attack,
                static_cast<double>(grown) / (1 << 20), static_cast<double>(kBound) / (1 << 20));
    return grown;
  };

  {  // one big frame, then a multipart message of big frames
    zmq::socket_t attacker(context, zmq::socket_type::dealer);
    attacker.set(zmq::sockopt::linger, 0);
    attacker.connect(endpoint);
    attacker.send(zmq::message_t(std::size_t{250} << 20), zmq::send_flags::none);
    for (int i = 0; i < 8; ++i) {
      attacker.send(zmq::message_t(std::size_t{200} << 20),
                    i < 7 ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    std::this_thread::sleep_for(milliseconds(1500));  // what was sent has arrived
  }
  EXPECT_LT(growth("a 250 MB frame, then 8 x 200 MB frames"), kBound);
  expect_served(context, endpoint);

  {  // amplification: sequence tables of huge shapes
    auto shape = small_shape();
    shape.n_layers = 65536;
    RemoteKvStoreOptions options;
    options.endpoint = endpoint;
    EXPECT_THROW(RemoteKvStore(context, shape, options).open(), Error);  // refused at register
    shape.n_layers = 4000;
    RemoteKvStore wide(context, shape, options);
    int refused = 0;
    for (int i = 0; i < 300; ++i) {
      try {
        wide.open();
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
        ++refused;
      }
    }
    EXPECT_GT(refused, 0);
    EXPECT_LT(growth("300 opens of a 4000-layer shape"), kBound);
  }
  expect_served(context, endpoint);
}

// With keys, a peer without one gets no service at all: not even an error reply.
TEST(KvStoreDaemon, WithKeysAPeerWithoutOneIsNotServed) {
  const auto keys =
      std::filesystem::temp_directory_path() / ("kvstore-keys-" + std::to_string(getpid()));
  std::filesystem::remove_all(keys);
  net::keygen(keys, {"worker-0"});
  Daemon daemon("tcp://127.0.0.1:0", {"--keys", keys.string()});
  const std::string endpoint = daemon.wait_ready();
  {
    zmq::context_t context;
    RemoteKvStoreOptions options;
    options.endpoint = endpoint;
    options.timeout = milliseconds(1000);
    try {
      RemoteKvStore store(context, small_shape(), options);
      store.open();
      FAIL() << "served without a key";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::permission_denied) << e.what();
    }
  }
  {
    zmq::context_t context;
    net::Security security(context, {keys, "worker-0", false, false});
    expect_served(context, endpoint);
  }
  std::filesystem::remove_all(keys);
}

}  // namespace
}  // namespace kvpr::kvstore
