// The /metrics endpoint under clients that misbehave: idle connections and a client trickling its
// request byte by byte do not delay a real scrape past 1 s; malformed requests get a 4xx and the
// server keeps serving; a second endpoint on a taken port fails with an error naming it; and
// --metrics-listen's HOST:PORT parses or names what is wrong with it.
#include "kvpr/net/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::net {
namespace {

using Clock = std::chrono::steady_clock;

// A TCP connection to 127.0.0.1:port, closed on destruction.
class RawClient {
 public:
  explicit RawClient(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  bool send(const std::string& data) {
    return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
  }
  // Everything until the server closes the connection (or 3 s pass).
  std::string receive_all() {
    timeval tv{3, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd_, buf, sizeof buf, 0)) > 0;)
      out.append(buf, static_cast<std::size_t>(n));
    return out;
  }

 private:
  int fd_;
  bool connected_ = false;
};

// One scrape by a real HTTP client; returns the body, or "" on any failure.
std::string scrape(int port, std::chrono::milliseconds* took = nullptr) {
  const auto start = Clock::now();
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(std::chrono::seconds(2));
  client.set_read_timeout(std::chrono::seconds(2));
  const httplib::Result res = client.Get("/metrics");
  if (took != nullptr)
    *took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  if (!res || res->status != 200) return "";
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  return res->body;
}

class MetricsTest : public ::testing::Test {
 protected:
  MetricsTest() : metrics_(0) {
    prometheus::BuildCounter()
        .Name("kvpr_test_scrapes_total")
        .Help("a counter for the test")
        .Register(metrics_.registry())
        .Add({})
        .Increment(3);
  }
  Metrics metrics_;
};

TEST_F(MetricsTest, ServesTheRegistry) {
  ASSERT_GT(metrics_.port(), 0);
  metrics_.rejected("malformed").Increment();
  const std::string text = scrape(metrics_.port());
  EXPECT_NE(text.find("kvpr_test_scrapes_total 3"), std::string::npos) << text;
  EXPECT_NE(text.find("kvpr_rejected_messages_total{reason=\"malformed\"} 1"), std::string::npos)
      << text;
}

TEST_F(MetricsTest, IdleAndTricklingClientsDoNotDelayAScrape) {
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 50; ++i) {
    idle.push_back(std::make_unique<RawClient>(metrics_.port()));
    ASSERT_TRUE(idle.back()->connected()) << "idle connection " << i;
  }
  std::atomic<bool> done{false};
  std::thread trickler([&] {
    const std::string request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    while (!done) {  // when the server drops it, start over: it keeps trying the whole test
      RawClient slow(metrics_.port());
      for (const char c : request) {
        if (done || !slow.send(std::string(1, c))) break;
        for (int i = 0; i < 10 && !done; ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  });
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    std::chrono::milliseconds took{};
    const std::string text = scrape(metrics_.port(), &took);
    EXPECT_NE(text.find("kvpr_test_scrapes_total 3"), std::string::npos) << "round " << round;
    EXPECT_LT(took.count(), 1000) << "round " << round;
  }
  done = true;
  trickler.join();
  // More idle connections than before, opened after the others went quiet: still served.
  for (int i = 0; i < 50; ++i) idle.push_back(std::make_unique<RawClient>(metrics_.port()));
  std::chrono::milliseconds took{};
  EXPECT_FALSE(scrape(metrics_.port(), &took).empty());
  EXPECT_LT(took.count(), 1000);
}

TEST_F(MetricsTest, BadRequestsGet4xxAndTheServerSurvives) {
  const auto status_of = [&](const std::string& request) {
    RawClient client(metrics_.port());
    EXPECT_TRUE(client.send(request));
    const std::string reply = client.receive_all();
    return reply.substr(0, reply.find("\r\n"));
  };
  EXPECT_EQ(status_of("NONSENSE\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(status_of("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"),
            "HTTP/1.1 413 Payload Too Large");
  EXPECT_EQ(status_of("GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 404 Not Found");
  EXPECT_EQ(status_of("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            "HTTP/1.1 405 Method Not Allowed");
  EXPECT_EQ(status_of(std::string(20000, 'A') + "\r\n\r\n").substr(0, 10), "HTTP/1.1 4");
  EXPECT_FALSE(scrape(metrics_.port()).empty());
}

TEST_F(MetricsTest, ASecondEndpointOnTheSamePortFails) {
  try {
    const Metrics second(metrics_.port());
    ADD_FAILURE() << "a second endpoint bound port " << metrics_.port();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::failed);
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(metrics_.port())), std::string::npos) << what;
    EXPECT_NE(what.find("in use"), std::string::npos) << what;
  }
  EXPECT_FALSE(scrape(metrics_.port()).empty());  // the first one is unharmed
}

TEST(Metrics, UnservedAndUnbindable) {
  const Metrics off(-1);
  EXPECT_EQ(off.port(), -1);
  EXPECT_THROW(Metrics(0, "not-a-host.invalid"), Error);
  EXPECT_THROW(Metrics(0, "192.0.2.1"), Error);  // TEST-NET-1: not an address of this host
  EXPECT_THROW(Metrics(70000), Error);
}

TEST(Metrics, StopsPromptlyWithClientsConnected) {
  auto metrics = std::make_unique<Metrics>(0);
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(std::make_unique<RawClient>(metrics->port()));
  RawClient partial(metrics->port());
  partial.send("GET /met");
  const auto start = Clock::now();
  metrics.reset();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
}

TEST(MetricsListen, Parses) {
  const MetricsAddress any = parse_metrics_listen("0.0.0.0:9500");
  EXPECT_EQ(any.host, "0.0.0.0");
  EXPECT_EQ(any.port, 9500);
  const MetricsAddress v6 = parse_metrics_listen("[::1]:0");
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 0);
  EXPECT_EQ(parse_metrics_listen("localhost:65535").port, 65535);
  for (const char* bad : {"9500", ":9500", "host:", "host:70000", "host:-1", "host:9x", "::1:9500",
                          "[]:1", "[::1:9500"}) {
    try {
      parse_metrics_listen(bad);
      ADD_FAILURE() << bad << " parsed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace kvpr::net
