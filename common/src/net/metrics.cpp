// net::Metrics: the registry and its /metrics endpoint on cpp-httplib.
//
// How the endpoint stays answerable (see metrics.h for the threat): the listening socket defers
// accept until a connection's first bytes arrive (TCP_DEFER_ACCEPT), so idle connections never
// reach the pool; one that does reach it without a request is dropped within ~10 ms
// (keep-alive wait 0). A request stalled between reads for kReadTimeout is dropped, a client that
// does not read its answer for kWriteTimeout too, and each response closes its connection, so a
// pool thread is never held by a quiet client for long. Threads: the listener thread runs
// httplib's accept loop, kPoolThreads pool threads serve connections; ~Metrics stops and joins
// them all.
#include "kvpr/net/metrics.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <sstream>

#include "kvpr/common/error.h"

namespace kvpr::net {
namespace {

constexpr std::size_t kPoolThreads = 4;
constexpr auto kReadTimeout = std::chrono::milliseconds(500);
constexpr auto kWriteTimeout = std::chrono::seconds(2);
constexpr int kDeferAcceptS = 2;
constexpr int kBacklog = 128;           // httplib listens with 5
constexpr std::size_t kMaxBody = 4096;  // GET has none; anything longer is refused (413)
constexpr const char* kTextFormat = "text/plain; version=0.0.4; charset=utf-8";

std::string shown_address(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? str("[", host, "]:", port) : str(host, ":", port);
}

}  // namespace

MetricsAddress parse_metrics_listen(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size())
    fail("--metrics-listen: '", text, "' is not HOST:PORT");
  std::string_view host = text.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']')
      fail("--metrics-listen: '", text, "' is not [IPV6]:PORT");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    fail("--metrics-listen: '", text, "': write an IPv6 host in brackets, [", host, "]:PORT");
  }
  const std::string_view digits = text.substr(colon + 1);
  int port = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || end != digits.data() + digits.size() || port < 0 || port > 65535)
    fail("--metrics-listen: port '", digits, "' of '", text, "' is not in [0, 65535]");
  return {std::string(host), port};
}

Metrics::Metrics(int port, const std::string& bind_host)
    : registry_(std::make_shared<prometheus::Registry>()) {
  rejected_ = &prometheus::BuildCounter()
                   .Name("kvpr_rejected_messages_total")
                   .Help(
                       "Requests answered with an error because they were malformed, of an "
                       "unknown type, out of range or past their deadline")
                   .Register(*registry_);
  if (port < 0) return;
  const std::string where = shown_address(bind_host, port);
  if (port > 65535) fail("metrics: port must be at most 65535, got ", port);
  addrinfo hints{};
  hints.ai_flags = AI_PASSIVE;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(bind_host.c_str(), nullptr, &hints, &found); rc != 0)
    fail("cannot serve metrics on ", where, ": ", ::gai_strerror(rc));
  ::freeaddrinfo(found);

  server_ = std::make_unique<httplib::Server>();
  httplib::Server& server = *server_;
  server.new_task_queue = [] { return new httplib::ThreadPool(kPoolThreads); };
  // httplib's default options add SO_REUSEPORT, which would let a second server share the port
  // (and half the scrapes) instead of failing to bind.
  int listen_fd = -1;
  server.set_socket_options([&listen_fd](socket_t fd) {
    const int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
#ifdef TCP_DEFER_ACCEPT
    ::setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &kDeferAcceptS, sizeof kDeferAcceptS);
#endif
    listen_fd = fd;
  });
  server.set_keep_alive_max_count(1);
  server.set_keep_alive_timeout(0);
  server.set_read_timeout(kReadTimeout);
  server.set_write_timeout(kWriteTimeout);
  server.set_payload_max_length(kMaxBody);
  server.Get("/metrics", [registry = registry_](const httplib::Request&, httplib::Response& res) {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry->Collect());
    res.set_content(out.str(), kTextFormat);
  });
  server.Get(".*", [](const httplib::Request&, httplib::Response& res) {
    res.status = 404;
    res.set_content("metrics are at /metrics\n", "text/plain");
  });
  const auto only_get = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET");
    res.set_content("only GET\n", "text/plain");
  };
  server.Post(".*", only_get);
  server.Put(".*", only_get);
  server.Delete(".*", only_get);
  server.Patch(".*", only_get);

  errno = 0;
  port_ = port == 0 ? server.bind_to_any_port(bind_host)
                    : (server.bind_to_port(bind_host, port) ? port : -1);
  if (port_ <= 0) {
    const int err = errno;
    port_ = -1;
    fail("cannot serve metrics on ", where, ": ", err != 0 ? std::strerror(err) : "bind failed");
  }
  if (listen_fd >= 0) ::listen(listen_fd, kBacklog);  // a larger queue for the same socket
  listener_ = std::thread([&server] { server.listen_after_bind(); });
  // stop() acts only once the accept loop runs: wait for it, so that ~Metrics cannot miss it.
  for (int i = 0; i < 5000 && !server.is_running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

Metrics::~Metrics() {
  if (!listener_.joinable()) return;
  server_->stop();
  listener_.join();
}

prometheus::Counter& Metrics::rejected(const std::string& reason) {
  return rejected_->Add({{"reason", reason}});
}

prometheus::Histogram::BucketBoundaries latency_buckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 1e-4; b < 200; b *= 2) bounds.push_back(b);
  return bounds;
}

}  // namespace kvpr::net
