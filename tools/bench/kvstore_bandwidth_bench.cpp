// kvpr-bench-kvstore: how fast a worker reads rows out of the kvstore daemon's memory, by path.
//
// An in-process KvStoreService owns the arena (allocated by UCX). For each size (default 1, 16
// and 64 MiB of rows: activations, K and V of one layer, f16, h = h_kv = 2048) it measures, best
// of --repeats runs:
//   memcpy      a plain memcpy of the same number of bytes between two private buffers (the
//               ceiling for a CPU reader)
//   zero_copy   a RemoteKvStore on the same host: locate() the rows and memcpy them out of the
//               mapped arena (ucp_rkey_ptr: shared memory, no transfer)
//   tcp_get     a RemoteKvStore in a child process with UCX_TLS=tcp, as on another host: locate()
//               fetches the committed rows into its mirror with ucp_get over loopback
//   tcp_put     the same child: commit() pushes freshly written rows with ucp_put and a flush
// after one untimed warm-up run, and prints GB/s (1e9 bytes/s) and the ratio to memcpy; --json FILE
// writes the same numbers.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/kvstore/remote_kv_store.h"

namespace {

using namespace kvpr;
using namespace kvpr::kvstore;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kPageBytes = std::size_t{4} << 20;
constexpr std::size_t kMiB = std::size_t{1} << 20;

struct Options {
  std::vector<std::size_t> sizes_mib = {1, 16, 64};
  int repeats = 3;
  std::string json_path;
  std::string tcp_child;  // internal: run as the tcp child against this endpoint
};

StoreShape bench_shape() {
  StoreShape shape;
  shape.n_layers = 1;
  shape.h = 2048;
  shape.h_kv = 2048;
  shape.dtype = DType::f16;
  return shape;
}

std::size_t token_bytes(const StoreShape& shape) {
  return shape.row_bytes(Part::act) + 2 * shape.row_bytes(Part::k);
}

std::int64_t tokens_for(std::size_t mib) {
  return static_cast<std::int64_t>(
      std::max<std::size_t>(1, mib * kMiB / token_bytes(bench_shape())));
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One untimed warm-up run (first touches of pages and mappings), then the best of `repeats`.
// A page-aligned, pre-touched buffer. Every source and destination of the bench is page-aligned
// (spans start at page offsets too), so no path pays for misaligned or 4K-aliased copies that
// another path avoids.
struct Buffer {
  explicit Buffer(std::size_t n, std::byte value)
      : bytes(n),
        data(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {
    if (data == nullptr) raise(ErrorKind::overloaded, "cannot allocate ", n, " bytes");
    std::memset(data, static_cast<int>(value), n);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::size_t bytes;
  std::byte* data;
};

template <typename F>
double best_of(int repeats, F&& run) {
  run();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) best = std::min(best, run());
  return best;
}

// Writes a recognisable byte into every row of [0, t) through the store's spans.
void fill(KvStoreClient& store, SeqId seq, std::int64_t t) {
  for (Part part : {Part::act, Part::k, Part::v}) {
    const std::size_t row = store.shape().row_bytes(part);
    for (const auto& span : store.locate(seq, 0, part, 0, t)) {
      std::memset(span.data, 0x40 + static_cast<int>(part),
                  static_cast<std::size_t>(span.n_tokens) * row);
    }
  }
}

// locate() every part of [0, t) and copy the rows into out; returns the bytes copied.
std::size_t read_all(KvStoreClient& store, SeqId seq, std::int64_t t, std::byte* out) {
  std::size_t at = 0;
  for (Part part : {Part::act, Part::k, Part::v}) {
    const std::size_t row = store.shape().row_bytes(part);
    for (const auto& span : store.locate(seq, 0, part, 0, t)) {
      const std::size_t bytes = static_cast<std::size_t>(span.n_tokens) * row;
      std::memcpy(out + at, span.data, bytes);
      at += bytes;
    }
  }
  return at;
}

// The tcp child: one JSON line per size on stdout.
int run_tcp_child(const Options& options) {
  zmq::context_t context;
  RemoteKvStoreOptions client_options;
  client_options.endpoint = options.tcp_child;
  client_options.name = "bench-tcp";
  client_options.timeout = std::chrono::seconds(30);
  RemoteKvStore store(context, bench_shape(), client_options);
  if (store.zero_copy()) fail("the tcp child mapped the arena: UCX_TLS=tcp did not apply");
  for (const std::size_t mib : options.sizes_mib) {
    const std::int64_t t = tokens_for(mib);
    const std::size_t bytes = static_cast<std::size_t>(t) * token_bytes(store.shape());
    Buffer out(bytes, std::byte{1});
    SeqId seq = 0;
    const double put = best_of(options.repeats, [&] {
      if (seq != 0) store.free(seq);
      seq = store.open();
      store.reserve(seq, t);
      fill(store, seq, t);
      const auto t0 = Clock::now();
      store.commit(seq, t);
      return seconds_since(t0);
    });
    const double get = best_of(options.repeats, [&] {
      const auto t0 = Clock::now();
      read_all(store, seq, t, out.data);
      return seconds_since(t0);
    });
    if (out.data[0] != std::byte{0x40} || out.data[bytes - 1] != std::byte{0x42}) {
      fail("tcp child read wrong bytes");
    }
    store.free(seq);
    std::printf("%s\n", json{{"mib", mib},
                             {"bytes", bytes},
                             {"tcp_get_gbps", static_cast<double>(bytes) / get / 1e9},
                             {"tcp_put_gbps", static_cast<double>(bytes) / put / 1e9}}
                            .dump()
                            .c_str());
    std::fflush(stdout);
  }
  return 0;
}

// Runs this program as the tcp child (UCX_TLS=tcp) and returns its JSON lines by size.
std::vector<json> spawn_tcp_child(const Options& options, const std::string& endpoint) {
  int out[2];
  if (pipe(out) != 0) fail("pipe: ", std::strerror(errno));
  std::string sizes;
  for (const std::size_t mib : options.sizes_mib) {
    sizes += (sizes.empty() ? "" : ",") + std::to_string(mib);
  }
  const std::string repeats = std::to_string(options.repeats);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    setenv("UCX_TLS", "tcp", 1);
    const char* argv[] = {"kvpr-bench-kvstore", "--tcp-child", endpoint.c_str(), "--sizes",
                          sizes.c_str(),        "--repeats",   repeats.c_str(),  nullptr};
    execv("/proc/self/exe", const_cast<char* const*>(argv));
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = read(out[0], buffer, sizeof buffer)) > 0;) text.append(buffer, n);
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("the tcp child failed (", status, ")");
  std::vector<json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

int run(const Options& options) {
  const std::size_t max_mib = *std::max_element(options.sizes_mib.begin(), options.sizes_mib.end());
  zmq::context_t context;
  KvStoreServiceOptions service_options;
  service_options.page_bytes = kPageBytes;
  // Room for the largest size twice (this process and the tcp child), rounded up to pages.
  service_options.capacity_bytes = 2 * (max_mib * kMiB + 2 * kPageBytes) + 4 * kPageBytes;
  KvStoreService service(context, service_options);
  service.start();

  RemoteKvStoreOptions client_options;
  client_options.endpoint = service.endpoint();
  client_options.name = "bench-local";
  RemoteKvStore store(context, bench_shape(), client_options);
  std::printf(
      "kvstore bandwidth: %s, shape h=h_kv=%lld f16, %lld tokens per %zu-byte page, "
      "zero copy %s, best of %d\n",
      service.endpoint().c_str(), static_cast<long long>(store.shape().h),
      static_cast<long long>(store.shape().block_tokens), kPageBytes,
      store.zero_copy() ? "yes" : "NO", options.repeats);

  std::vector<json> results;
  for (const std::size_t mib : options.sizes_mib) {
    const std::int64_t t = tokens_for(mib);
    const std::size_t bytes = static_cast<std::size_t>(t) * token_bytes(store.shape());
    const SeqId seq = store.open();
    store.reserve(seq, t);
    fill(store, seq, t);
    store.commit(seq, t);
    Buffer src(bytes, std::byte{7});
    Buffer dst(bytes, std::byte{0});
    const double memcpy_s = best_of(options.repeats, [&] {
      const auto t0 = Clock::now();
      std::memcpy(dst.data, src.data, bytes);
      return seconds_since(t0);
    });
    const double zero_copy_s = best_of(options.repeats, [&] {
      const auto t0 = Clock::now();
      read_all(store, seq, t, dst.data);
      return seconds_since(t0);
    });
    if (dst.data[0] != std::byte{0x40} || dst.data[bytes - 1] != std::byte{0x42}) {
      fail("zero-copy read wrong bytes");
    }
    store.free(seq);
    const double gb = static_cast<double>(bytes) / 1e9;
    results.push_back({{"mib", mib},
                       {"bytes", bytes},
                       {"memcpy_gbps", gb / memcpy_s},
                       {"zero_copy_gbps", gb / zero_copy_s},
                       {"zero_copy_ratio", memcpy_s / zero_copy_s}});
  }

  const auto tcp = spawn_tcp_child(options, service.endpoint());
  std::printf("%8s %12s %22s %22s %12s\n", "MiB", "memcpy GB/s", "zero-copy GB/s (ratio)",
              "tcp get GB/s (ratio)", "tcp put GB/s");
  for (std::size_t i = 0; i < results.size(); ++i) {
    json& r = results[i];
    if (i < tcp.size()) {
      r["tcp_get_gbps"] = tcp[i].at("tcp_get_gbps");
      r["tcp_put_gbps"] = tcp[i].at("tcp_put_gbps");
      r["tcp_get_ratio"] =
          tcp[i].at("tcp_get_gbps").get<double>() / r.at("memcpy_gbps").get<double>();
    }
    std::printf("%8zu %12.2f %14.2f (%5.2f) %14.2f (%5.2f) %12.2f\n",
                r.at("mib").get<std::size_t>(), r.at("memcpy_gbps").get<double>(),
                r.at("zero_copy_gbps").get<double>(), r.at("zero_copy_ratio").get<double>(),
                r.value("tcp_get_gbps", 0.0), r.value("tcp_get_ratio", 0.0),
                r.value("tcp_put_gbps", 0.0));
  }
  if (!options.json_path.empty()) {
    const json doc{{"bench", "kvstore_bandwidth"},
                   {"repeats", options.repeats},
                   {"page_bytes", kPageBytes},
                   {"shape", {{"h", 2048}, {"h_kv", 2048}, {"dtype", "f16"}}},
                   {"zero_copy", store.zero_copy()},
                   {"results", results}};
    std::ofstream out(options.json_path);
    out << doc.dump(2) << "\n";
    if (!out) fail("cannot write '", options.json_path, "'");
  }
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  Options options;
  CLI::App app(
      "kvpr-bench-kvstore: read bandwidth out of the kvstore daemon's memory: memcpy, the "
      "zero-copy mapping, and ucp_get/ucp_put over tcp (a child process with UCX_TLS=tcp)");
  app.add_option("--sizes", options.sizes_mib, "sizes in MiB, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--repeats", options.repeats, "runs per size (the best is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--json", options.json_path, "also write the results to FILE");
  app.add_option("--tcp-child", options.tcp_child)->group("");  // internal: the tcp child
  CLI11_PARSE(app, argc, argv);
  try {
    return options.tcp_child.empty() ? run(options) : run_tcp_child(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvpr-bench-kvstore: %s\n", e.what());
    return 1;
  }
}
