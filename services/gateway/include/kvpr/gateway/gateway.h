// kvpr's HTTP front door: an OpenAI-compatible server (cpp-httplib) over an Upstream.
//
//   POST /v1/completions, POST /v1/chat/completions  — plain JSON, or server-sent events with
//        `"stream": true` (data: {chunk}\n\n … data: [DONE]\n\n)
//   GET  /v1/models                                   — the one served model
//   GET  /health   — 200 {"status":"ok"} while the upstream has a live worker, else 503
//   GET  /metrics  — Prometheus text of options.registry (the gateway's own metrics are there)
//
// The gateway owns text: it tokenizes text prompts (BOS first; token-id prompts go as sent),
// applies the chat template, turns ids back into UTF-8 deltas and applies stop strings
// (text_stream.h); the Upstream sees ids only. Errors are OpenAI-shaped ({"error": {...}}):
// 400/404/413 from the request (request.h), 401 for a missing or unknown API key when keys are
// configured, 503 with Retry-After when the upstream is overloaded, 502 when it disconnected, 500
// for anything else; the server keeps serving.
//
// Threads: start() runs the accept loop on its own thread; each request runs on one of
// options.threads pool threads, a stream for its whole length (plus one thread per stream that
// runs the upstream's generate()). A client that goes away mid-stream stops its sequences (the
// upstream's on_token returns false). stop() refuses new requests, waits up to
// options.drain_timeout for those in flight, then closes the server. The Upstream, Tokenizer and
// registry must outlive the Gateway.
#pragma once

#include <prometheus/registry.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/chat_template.h"
#include "kvpr/gateway/upstream.h"

namespace kvpr::gateway {

struct GatewayOptions {
  std::string host = "127.0.0.1";
  int port = 0;                       // 0: any free port (see Gateway::port())
  std::string model_name;             // what clients pass as "model"
  std::int64_t max_positions = 0;     // the model's context: prompt + max_tokens must fit
  std::vector<std::string> api_keys;  // empty: no authentication
  std::string tls_cert;               // PEM certificate (chain): serve HTTPS; with tls_key
  std::string tls_key;                // PEM private key of tls_cert
  std::size_t threads = 64;           // requests served at once (each stream holds one)
  std::chrono::seconds read_timeout{30};
  std::chrono::seconds write_timeout{30};
  std::chrono::seconds drain_timeout{30};
  // A request still generating this long after it arrived is ended by its worker (an error; the
  // worker frees its sequences). 0: no deadline.
  std::chrono::seconds request_timeout{600};
  std::size_t max_body_bytes = 8U << 20U;
  ChatFormat chat_format = ChatFormat::plain;  // load_chat_format(checkpoint dir)
  bool add_bos = true;                         // text prompts start with the tokenizer's BOS id
  // Where the gateway registers its metrics and what /metrics serves; null: a registry of its own.
  prometheus::Registry* registry = nullptr;
  // More registries /metrics serves after the gateway's (the embedded worker's in kvpr serve).
  std::vector<prometheus::Registry*> also_serve;
};

// API keys from a file: one per line; blank lines and lines starting with '#' are skipped.
// Throws Error(failed) naming the file when it cannot be read or holds no key.
std::vector<std::string> load_api_keys(const std::filesystem::path& path);

class Gateway {
 public:
  Gateway(GatewayOptions options, Upstream& upstream, const Tokenizer& tokenizer);
  ~Gateway();  // stop()s
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds and starts serving; throws Error(failed) naming host:port when it cannot bind.
  void start();
  int port() const;  // the bound port, after start()
  // Drains (see above) and stops; safe to call twice and before start().
  void stop();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpr::gateway
