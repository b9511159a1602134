// UCX opens its sockets only on the interface of the service's ZeroMQ endpoint: a kvstore service
// on tcp://127.0.0.1 and a client of it, in this process, leave every listening TCP socket of the
// process on loopback — none on 0.0.0.0 or ::, none on another interface's address. The sockets
// are this process's: the inodes of /proc/self/fd matched against /proc/self/net/tcp and tcp6.
// Built twice, like the remote tests: with the transports UCX picks and with UCX_TLS=tcp.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/kvstore/remote_kv_store.h"
#include "kvstore_test_support.h"

namespace kvpr::kvstore {
namespace {

#ifdef KVPR_TEST_UCX_TLS_TCP
// Runs before main(), so before any UCX context of this process reads its configuration.
const int kForceTcp = [] { return setenv("UCX_TLS", "tcp", 1); }();
#define UcxListeners UcxListenersTcp  // distinct CTest names for the two builds
#endif

struct Listener {
  std::string address;  // as in /proc/net/tcp*: hex, each 32-bit word in host (little) order
  bool v6 = false;
};

// Inodes of the sockets this process holds open.
std::set<std::string> own_socket_inodes() {
  std::set<std::string> out;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return out;
  while (const dirent* entry = readdir(dir)) {
    char target[256] = {};
    const std::string path = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
    const std::string link(target, n > 0 ? static_cast<std::size_t>(n) : 0);
    if (link.rfind("socket:[", 0) == 0) out.insert(link.substr(8, link.size() - 9));
  }
  closedir(dir);
  return out;
}

// The listening sockets (state 0A) of /proc/self/net/tcp or tcp6 whose inode is in `own`.
void listeners(const std::string& table, bool v6, const std::set<std::string>& own,
               std::vector<Listener>& out) {
  std::ifstream in(table);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
    fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
        timeout >> inode;
    if (state != "0A" || own.count(inode) == 0) continue;
    out.push_back({local.substr(0, local.find(':')), v6});
  }
}

bool loopback(const Listener& l) {
  if (!l.v6) return l.address.size() == 8 && l.address.substr(6) == "7F";  // 127.x.x.x
  // ::1, or ::ffff:127.x.x.x
  return l.address == "00000000000000000000000001000000" ||
         (l.address.substr(0, 24) == "0000000000000000FFFF0000" && l.address.substr(30) == "7F");
}

bool wildcard(const Listener& l) {
  return l.address.find_first_not_of('0') == std::string::npos;
}

TEST(UcxListeners, AServiceOnLoopbackAndItsClientListenOnlyOnLoopback) {
  if (std::getenv("UCX_NET_DEVICES") != nullptr) GTEST_SKIP() << "UCX_NET_DEVICES is set";
  zmq::context_t context;
  KvStoreServiceOptions options;
  options.endpoint = "tcp://127.0.0.1:0";
  options.capacity_bytes = 1 << 20;
  options.page_bytes = 1024;
  KvStoreService service(context, options);
  service.start();
  RemoteKvStoreOptions client_options;
  client_options.endpoint = service.endpoint();
  client_options.name = "listener-test";
  client_options.timeout = std::chrono::milliseconds(2000);
  RemoteKvStore client(context, testing::small_shape(), client_options);
  const SeqId seq = client.open();  // the client's UCX endpoint to the service is up
  client.reserve(seq, 4);

  const auto own = own_socket_inodes();
  std::vector<Listener> found;
  listeners("/proc/self/net/tcp", false, own, found);
  listeners("/proc/self/net/tcp6", true, own, found);
  // ZeroMQ's and at least UCX's tcp transport on loopback: the check is not vacuous.
  ASSERT_GE(found.size(), 2u);
  for (const auto& l : found) {
    EXPECT_FALSE(wildcard(l)) << "a listening socket on " << (l.v6 ? "::" : "0.0.0.0");
    EXPECT_TRUE(loopback(l)) << "a listening socket on " << l.address << (l.v6 ? " (v6)" : "")
                             << ", not on loopback";
  }
}

}  // namespace
}  // namespace kvpr::kvstore
