// Authentication of every ZeroMQ socket with CURVE (encryption + a key per peer), scoped to a
// ZeroMQ context the way ZeroMQ scopes its own ZAP handler.
//
// A key directory (`kvpr keygen --out DIR`, or `kvpr up`'s RUN/keys) holds:
//   server.key, server.pub   the listening sockets' key pair: one per deployment, on every service
//   NAME.key                 a peer's own key pair (worker-0, gateway-0, client, ...): its identity
//                            when it connects to a service
//   authorized/NAME.pub      the peers the services accept; NAME is the authenticated principal
// A process holds only what it needs: a service server.key, its NAME.key and authorized/; a client
// server.pub and its NAME.key. Peers rotate by adding their new .pub to authorized/ and removing
// the old one: the services re-read the folder within a second.
//
// `Security` binds such a directory to a context: every `Router` made on the context is a CURVE
// server whose connections a ZAP handler admits only from keys in authorized/ (naming the peer in
// each request's `principal`), every `RpcClient` a CURVE client. Without a Security on a context,
// sockets are plain: fine on loopback, refused elsewhere unless the context was secured with
// `insecure` (a Router on a non-loopback address then starts, with a warning).
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

namespace kvpr::net {

struct KeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

KeyPair generate_key_pair();
// Files in ZeroMQ's certificate format (a `curve` section with public-key / secret-key); the
// secret file is written mode 0600. Raise Error(failed) naming the file when it cannot be
// written, read, or holds no valid key.
void write_key_file(const std::filesystem::path& file, const KeyPair& keys, bool with_secret);
KeyPair read_key_file(const std::filesystem::path& file, bool need_secret);

// Makes DIR's server pair when it has none, and a pair NAME.key plus authorized/NAME.pub for each
// name whose key does not exist yet. Returns the files written.
std::vector<std::filesystem::path> keygen(const std::filesystem::path& dir,
                                          const std::vector<std::string>& names);

// True for endpoints only this host can reach: tcp on 127.0.0.0/8, ::1 or localhost; ipc; inproc.
bool is_loopback_endpoint(const std::string& endpoint);

struct SecurityOptions {
  std::filesystem::path keys;  // empty: no authentication
  std::string name;            // this process's identity: keys/NAME.key (when it connects out)
  bool listens = true;         // needs keys/server.key and keys/authorized/
  bool insecure = false;       // without keys, still listen on non-loopback addresses
};

class Security {
 public:
  // Reads the keys (failing with one line naming a missing or bad file) and, for a listening
  // process, starts the context's ZAP handler. Construct after the context, destroy before it.
  Security(zmq::context_t& context, SecurityOptions options);
  ~Security();
  Security(const Security&) = delete;
  Security& operator=(const Security&) = delete;

  bool authenticates() const { return !options_.keys.empty(); }
  // Connections the ZAP handler refused so far.
  std::uint64_t refused() const { return refused_.load(); }

  // What Router and RpcClient call on their sockets (no-ops on a context without a Security).
  // `on_refused` runs on the ZAP thread for each connection of this socket it refuses.
  static void secure_server(zmq::context_t& context, zmq::socket_t& socket,
                            const std::string& endpoint, std::function<void()> on_refused);
  static void secure_client(zmq::context_t& context, zmq::socket_t& socket);

 private:
  void serve_zap();
  void refuse(const std::string& domain);  // counts a refused connection of that socket
  void watch_event(std::size_t index, const std::string& domain);
  std::string principal_of(const std::string& public_z85);

  zmq::context_t& context_;
  SecurityOptions options_;
  KeyPair server_;  // listening sockets (services)
  KeyPair own_;     // this process connecting out
  std::string server_public_;
  std::mutex mutex_;                               // guards what follows
  std::map<std::string, std::string> authorized_;  // public key (Z85) -> principal
  std::chrono::steady_clock::time_point authorized_read_{};
  std::map<std::string, std::function<void()>> on_refused_;  // ZAP domain -> counter
  // Each secured socket's handshake failures that never reach ZAP (a peer without keys, or with
  // another mechanism): counted as refusals too. Polled by the ZAP thread.
  struct Watch {
    std::unique_ptr<zmq::socket_t> monitor;
    std::string domain;
  };
  std::vector<Watch> watches_;
  std::atomic<std::uint64_t> refused_{0};
  std::atomic<bool> stop_{false};
  std::unique_ptr<zmq::socket_t> zap_;
  std::thread zap_thread_;
};

}  // namespace kvpr::net
