#include "kvpr/gateway/gateway.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gateway_impl.h"
#include "kvpr/common/log.h"

namespace kvpr::gateway {

using nlohmann::json;

namespace {

constexpr const char* kJson = "application/json";

std::string route_label(const std::string& path) {
  for (const char* route :
       {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == route) return route;
  }
  return "other";
}

// Compares without an early exit, so that the time taken does not tell how much of a key matched.
bool same_key(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

}  // namespace

std::vector<std::string> load_api_keys(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read API key file ", path.string());
  std::vector<std::string> keys;
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') keys.push_back(line);
  }
  if (keys.empty()) fail("API key file ", path.string(), " holds no key");
  return keys;
}

namespace {

std::unique_ptr<httplib::Server> make_server(const GatewayOptions& options) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    fail("gateway: TLS needs both --tls-cert and --tls-key");
  }
  if (options.tls_cert.empty()) return std::make_unique<httplib::Server>();
  for (const auto& file : {options.tls_cert, options.tls_key}) {
    if (!std::filesystem::is_regular_file(file)) fail("gateway: no such file '", file, "'");
  }
  auto server =
      std::make_unique<httplib::SSLServer>(options.tls_cert.c_str(), options.tls_key.c_str());
  if (!server->is_valid()) {
    fail("gateway: cannot load the certificate '", options.tls_cert, "' with the key '",
         options.tls_key, "' (PEM files of one key pair)");
  }
  return server;
}

}  // namespace

Gateway::Impl::Impl(GatewayOptions options, Upstream& upstream, const Tokenizer& tokenizer)
    : options_(std::move(options)),
      upstream_(&upstream),
      tokenizer_(&tokenizer),
      own_registry_(options_.registry ? nullptr : std::make_unique<prometheus::Registry>()),
      registry_(options_.registry ? options_.registry : own_registry_.get()),
      metrics_(*registry_, options_.model_name),
      limits_{options_.model_name, tokenizer.vocab_size(), options_.max_positions},
      server_(make_server(options_)) {
  if (options_.model_name.empty()) fail("gateway: the served model name is empty");
  if (options_.max_positions <= 0) {
    fail("gateway: max_positions must be positive, got ", options_.max_positions);
  }
  if (options_.threads == 0) fail("gateway: threads must be positive");
  routes();
}

Gateway::Impl::InFlight::InFlight(Impl& impl) : impl_(&impl) {
  const std::scoped_lock lock(impl_->in_flight_mutex_);
  ++impl_->in_flight_;
}

Gateway::Impl::InFlight::~InFlight() {
  const std::scoped_lock lock(impl_->in_flight_mutex_);
  if (--impl_->in_flight_ == 0) impl_->in_flight_cv_.notify_all();
}

void Gateway::Impl::reply_error(httplib::Response& response, const ApiError& error) {
  response.status = error.status();
  response.set_content(error.body(), kJson);
}

ApiError Gateway::Impl::upstream_error(const Error& error) {
  switch (error.kind()) {
    case ErrorKind::overloaded:
      return {503, str("the server is overloaded: ", error.what()), "", "server_error",
              "overloaded"};
    case ErrorKind::disconnected:
      return {502, str("the model worker went away: ", error.what()), "", "server_error",
              "upstream_disconnected"};
    case ErrorKind::unimplemented:
      return {501, error.what(), "", "invalid_request_error", "unsupported"};
    case ErrorKind::permission_denied:  // the gateway's own credentials were refused upstream
      return {502, str("the model worker refused the gateway: ", error.what()), "", "server_error",
              "upstream_refused"};
    default:
      return {400, error.what(), "", "invalid_request_error"};
  }
}

bool Gateway::Impl::authorized(const httplib::Request& request, httplib::Response& response) const {
  if (options_.api_keys.empty()) return true;
  const std::string header = request.get_header_value("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (header.starts_with(kBearer)) {
    const std::string key = header.substr(kBearer.size());
    bool match = false;
    for (const std::string& known : options_.api_keys) match = same_key(key, known) || match;
    if (match) return true;
  }
  reply_error(response,
              ApiError(401,
                       header.empty() ? "no API key given: send 'Authorization: Bearer <key>'"
                                      : "the API key is not valid",
                       "", "invalid_request_error", "invalid_api_key"));
  return false;
}

void Gateway::Impl::routes() {
  server_->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    if (authorized(req, res)) generate(req, res, false);
  });
  server_->Post("/v1/chat/completions",
                [this](const httplib::Request& req, httplib::Response& res) {
                  if (authorized(req, res)) generate(req, res, true);
                });
  server_->Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    const json model = {{"id", options_.model_name},
                        {"object", "model"},
                        {"created", 0},
                        {"owned_by", "kvpr"},
                        {"max_model_len", options_.max_positions}};
    res.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), kJson);
  });
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    std::int64_t alive = 0;
    try {
      for (const WorkerRoom& room : upstream_->workers()) alive += room.alive ? 1 : 0;
    } catch (const std::exception& e) {
      log::warn("gateway: workers() failed: ", e.what());
    }
    res.status = alive > 0 && !stopping_ ? 200 : 503;
    res.set_content(
        json{{"status", res.status == 200 ? "ok" : "unavailable"}, {"workers_alive", alive}}.dump(),
        kJson);
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    auto families = registry_->Collect();
    // A family both registries have (time to first token, ...) is served once, with the
    // metrics of both (their labels differ), as the text format wants each name once.
    for (prometheus::Registry* more : options_.also_serve) {
      for (auto& family : more->Collect()) {
        auto same = std::find_if(families.begin(), families.end(),
                                 [&](const auto& f) { return f.name == family.name; });
        if (same == families.end()) {
          families.push_back(std::move(family));
        } else {
          same->metric.insert(same->metric.end(), family.metric.begin(), family.metric.end());
        }
      }
    }
    res.set_content(prometheus::TextSerializer().Serialize(families), "text/plain; version=0.0.4");
  });
  server_->set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, const std::exception_ptr& ep) {
        std::string what = "unknown";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        log::error("gateway: ", req.method, " ", req.path, " failed: ", what);
        reply_error(res, ApiError(500, "internal error: " + what, "", "server_error"));
      });
  server_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error reply
    const std::string message = res.status == 404 ? str("no route ", req.method, " ", req.path)
                                                  : str("HTTP error ", res.status);
    reply_error(res, ApiError(res.status, message));
  });
  server_->set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.count_request(route_label(req.path), res.status);
  });
}

void Gateway::Impl::start() {
  if (listener_.joinable()) fail("gateway: already started");
  const std::size_t threads = options_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_read_timeout(options_.read_timeout.count(), 0);
  server_->set_write_timeout(options_.write_timeout.count(), 0);
  server_->set_payload_max_length(options_.max_body_bytes);
  server_->set_keep_alive_timeout(2);
  if (options_.port < 0 || options_.port > 65535) {
    fail("gateway: port must be in [0, 65535], got ", options_.port);
  }
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
  } else {
    port_ = server_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) fail("gateway: cannot listen on ", options_.host, ":", options_.port);
  auto ended = std::make_shared<std::atomic<bool>>(false);
  listener_ = std::thread([this, ended] {
    server_->listen_after_bind();
    *ended = true;
  });
  // stop() is a no-op on a server whose accept loop has not begun: wait until it has.
  while (!server_->is_running() && !*ended) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (*ended) {
    listener_.join();
    fail("gateway: the server on ", options_.host, ":", port_, " ended at once");
  }
  log::info("gateway: serving '", options_.model_name, "' on http://", options_.host, ":", port_);
}

void Gateway::Impl::stop() {
  if (stopping_.exchange(true)) return;
  if (!listener_.joinable()) return;
  {
    std::unique_lock lock(in_flight_mutex_);
    if (!in_flight_cv_.wait_for(lock, options_.drain_timeout, [&] { return in_flight_ == 0; })) {
      log::warn("gateway: ", in_flight_, " requests still running after the drain timeout");
    }
  }
  server_->stop();
  listener_.join();
  log::info("gateway: stopped");
}

Gateway::Gateway(GatewayOptions options, Upstream& upstream, const Tokenizer& tokenizer)
    : impl_(std::make_unique<Impl>(std::move(options), upstream, tokenizer)) {}

Gateway::~Gateway() {
  try {
    stop();
  } catch (const std::exception& e) {
    log::error("gateway: stop failed: ", e.what());
  }
}

void Gateway::start() {
  impl_->start();
}
int Gateway::port() const {
  return impl_->port();
}
void Gateway::stop() {
  impl_->stop();
}

}  // namespace kvpr::gateway
