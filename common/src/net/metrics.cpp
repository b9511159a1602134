#include "kvpr/net/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "kvpr/common/error.h"

namespace kvpr::net {
namespace {

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void send_all(int fd, const std::string& data) {
  std::size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;  // the scraper went away; nothing to do
    sent += static_cast<std::size_t>(n);
  }
}

}  // namespace

Metrics::Metrics(int port, const std::string& bind_host)
    : registry_(std::make_shared<prometheus::Registry>()) {
  rejected_ = &prometheus::BuildCounter()
                   .Name("kvpr_rejected_messages_total")
                   .Help(
                       "Requests answered with an error because they were malformed, of an "
                       "unknown type, out of range or past their deadline")
                   .Register(*registry_);
  if (port < 0) return;
  if (port > 65535) fail("--metrics-port must be at most 65535, got ", port);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, bind_host.c_str(), &addr.sin_addr) != 1) {
    fail("metrics: '", bind_host, "' is not an IPv4 address");
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) fail("metrics: socket: ", std::strerror(errno));
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0) {
    const std::string why = std::strerror(errno);
    close_fd(listen_fd_);
    fail("cannot serve metrics on ", bind_host, ":", port, ": ", why);
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  if (::pipe2(wake_, O_CLOEXEC) != 0) {
    close_fd(listen_fd_);
    fail("metrics: pipe: ", std::strerror(errno));
  }
  server_ = std::thread([this] { serve(); });
}

Metrics::~Metrics() {
  if (server_.joinable()) {
    const char byte = 1;
    (void)!::write(wake_[1], &byte, 1);
    server_.join();
  }
  close_fd(wake_[0]);
  close_fd(wake_[1]);
  close_fd(listen_fd_);
}

// Serves one connection at a time until woken through the pipe. A scraper that sends nothing
// within 2 s is dropped, so a stuck client cannot block the next scrape for long.
void Metrics::serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if ((fds[1].revents & POLLIN) != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    answer(client);
    ::close(client);
  }
}

void Metrics::answer(int client) {
  std::string request;
  char buf[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    pollfd p{client, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return;
    const ssize_t n = ::recv(client, buf, sizeof buf, 0);
    if (n <= 0) return;
    request.append(buf, static_cast<std::size_t>(n));
  }
  const auto line_end = request.find("\r\n");
  const std::string line = request.substr(0, line_end);
  const bool get = line.starts_with("GET ");
  const auto path_end = line.find(' ', 4);
  const std::string path = get ? line.substr(4, path_end - 4) : "";
  std::string status = "200 OK";
  std::string body;
  if (!get) {
    status = "405 Method Not Allowed";
    body = "only GET\n";
  } else if (path == "/metrics" || path.starts_with("/metrics?")) {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry_->Collect());
    body = out.str();
  } else {
    status = "404 Not Found";
    body = "metrics are at /metrics\n";
  }
  std::ostringstream head;
  head << "HTTP/1.1 " << status << "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
       << "\r\nContent-Length: " << body.size() << "\r\nConnection: close\r\n\r\n";
  send_all(client, head.str() + body);
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
