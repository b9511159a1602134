// CURVE authentication over real TCP sockets: a key folder from keygen, a secured Router and
// RpcClients with the right key, a foreign key, no key; the principal a request carries; keys
// added and removed while serving; the refusal to listen beyond loopback without keys.
#include "kvpr/net/security.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/net/rpc.h"

namespace kvpr::net {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct TempDir {
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "kvpr-keys-XXXXXX").string();
    path = mkdtemp(templ.data());
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
};

// A secured service on its own context that answers each request with its principal.
struct Service {
  explicit Service(const fs::path& keys)
      : security(context, {keys, "", true, false}),
        router(context, "tcp://127.0.0.1:0", [this] { ++refused; }) {
    thread = std::thread([this] {
      while (!stop) {
        auto request = router.receive(50ms);
        if (!request) continue;
        capnp::MallocMessageBuilder reply;
        set_error(reply.initRoot<wire::Error>(), Error(ErrorKind::failed, request->principal));
        router.send(request->peer, reply);
      }
    });
  }
  ~Service() {
    stop = true;
    thread.join();
  }
  zmq::context_t context;
  Security security;
  Router router;
  std::atomic<int> refused{0};
  std::atomic<bool> stop{false};
  std::thread thread;
};

// Sends one message as the client of `keys` (named `name`; empty keys: no authentication) and
// returns the principal the service saw.
std::string ask(const Service& service, const fs::path& keys, const std::string& name) {
  zmq::context_t context;
  Security security(context, {keys, name, false, false});
  RpcClient client(context, service.router.endpoint(), "test service");
  capnp::MallocMessageBuilder request;
  set_error(request.initRoot<wire::Error>(), Error(ErrorKind::failed, "who am I?"));
  client.send(request, 1500ms);
  auto frame = client.receive(5s);
  if (frame == nullptr) return "<no answer>";
  const std::string reason = frame->root<wire::Error>().getReason().cStr();
  return reason.substr(reason.find_last_of(' ') + 1);
}

ErrorKind refusal(const Service& service, const fs::path& keys, const std::string& name) {
  try {
    const std::string who = ask(service, keys, name);
    ADD_FAILURE() << "served as '" << who << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("test service"), std::string::npos) << e.what();
    return e.kind();
  }
  return ErrorKind::failed;
}

TEST(Security, KeygenWritesCertificatesWithPrivateSecrets) {
  TempDir dir;
  const auto written = keygen(dir.path, {"worker-0", "client"});
  EXPECT_EQ(written.size(), 6u);
  for (const char* name : {"server.key", "worker-0.key", "client.key"}) {
    struct stat st {};
    ASSERT_EQ(::stat((dir.path / name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
    const KeyPair keys = read_key_file(dir.path / name, true);
    EXPECT_EQ(keys.public_key.size(), 40u);
  }
  EXPECT_EQ(read_key_file(dir.path / "authorized" / "client.pub", false).public_key,
            read_key_file(dir.path / "client.key", true).public_key);
  EXPECT_TRUE(keygen(dir.path, {"client"}).empty());  // existing keys are kept
  EXPECT_THROW(keygen(dir.path, {"../evil"}), Error);
  std::ofstream(dir.path / "broken.key") << "curve\n    public-key = \"short\"\n";
  try {
    read_key_file(dir.path / "broken.key", true);
    FAIL() << "a broken key was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.key"), std::string::npos) << e.what();
  }
}

TEST(Security, OnlyAuthorizedKeysAreServedAndNamed) {
  TempDir deployment;
  keygen(deployment.path, {"worker-0"});
  Service service(deployment.path);
  EXPECT_EQ(ask(service, deployment.path, "worker-0"), "worker-0");

  // A key pair the deployment never authorized, with the right server key.
  TempDir stranger;
  keygen(stranger.path, {"worker-0"});
  fs::copy_file(deployment.path / "server.pub", stranger.path / "server.pub",
                fs::copy_options::overwrite_existing);
  EXPECT_EQ(refusal(service, stranger.path, "worker-0"), ErrorKind::permission_denied);
  EXPECT_GE(service.refused.load(), 1);
  EXPECT_GE(service.security.refused(), 1u);

  // No keys at all: the handshake fails (before ZAP is asked); no service either; counted too.
  const int before = service.refused.load();
  EXPECT_EQ(refusal(service, "", ""), ErrorKind::permission_denied);
  for (int i = 0; i < 100 && service.refused.load() == before; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GT(service.refused.load(), before);
  EXPECT_EQ(ask(service, deployment.path, "worker-0"), "worker-0");  // still serving
}

TEST(Security, KeysAddedAndRemovedWhileServingTakeEffect) {
  TempDir deployment;
  keygen(deployment.path, {"worker-0"});
  Service service(deployment.path);
  EXPECT_EQ(ask(service, deployment.path, "worker-0"), "worker-0");
  // A new peer: its .pub lands in authorized/ while the service runs.
  TempDir newcomer;
  keygen(newcomer.path, {"gateway-1"});
  fs::copy_file(deployment.path / "server.pub", newcomer.path / "server.pub",
                fs::copy_options::overwrite_existing);
  fs::copy_file(newcomer.path / "authorized" / "gateway-1.pub",
                deployment.path / "authorized" / "gateway-1.pub");
  std::this_thread::sleep_for(1100ms);  // the folder is read again at most once a second
  EXPECT_EQ(ask(service, newcomer.path, "gateway-1"), "gateway-1");
  // Revoked: its .pub removed.
  fs::remove(deployment.path / "authorized" / "gateway-1.pub");
  std::this_thread::sleep_for(1100ms);
  EXPECT_EQ(refusal(service, newcomer.path, "gateway-1"), ErrorKind::permission_denied);
}

TEST(Security, NoListeningBeyondLoopbackWithoutKeysUnlessInsecure) {
  EXPECT_TRUE(is_loopback_endpoint("tcp://127.0.0.1:5555"));
  EXPECT_TRUE(is_loopback_endpoint("tcp://localhost:0"));
  EXPECT_TRUE(is_loopback_endpoint("tcp://[::1]:5555"));
  EXPECT_TRUE(is_loopback_endpoint("inproc://x"));
  EXPECT_FALSE(is_loopback_endpoint("tcp://0.0.0.0:5555"));
  EXPECT_FALSE(is_loopback_endpoint("tcp://*:5555"));
  EXPECT_FALSE(is_loopback_endpoint("tcp://10.0.0.7:5555"));
  {
    zmq::context_t context;
    try {
      Router router(context, "tcp://0.0.0.0:0");
      FAIL() << "listened on 0.0.0.0 without keys";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("0.0.0.0"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--insecure"), std::string::npos) << e.what();
    }
  }
  zmq::context_t context;
  Security insecure(context, {"", "", true, true});
  Router router(context, "tcp://0.0.0.0:0");
  EXPECT_FALSE(router.endpoint().empty());
}

}  // namespace
}  // namespace kvpr::net
