#include "kvpr/worker/profiler.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <random>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_client.h"
#include "kvpr/worker/host_attention.h"

namespace kvpr::worker {

using kernels::Queue;
using kernels::Tensor;

namespace {

std::string processor_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown processor";
}

std::string now_iso() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Repeats `run` (which enqueues work on `queue`) until the measured time passes the target, and
// returns the mean seconds per run, timed with the backend's events.
template <typename F>
double timed(kernels::Backend& backend, Queue queue, double target_s, F&& run) {
  run();  // warm-up: first-touch of buffers, thread start
  backend.synchronize();
  int reps = 0;
  double total = 0;
  while (reps < 32 && (total < target_s || reps < 2)) {
    const auto from = backend.record(queue);
    run();
    const auto to = backend.record(queue);
    backend.host_wait(to);
    total += backend.elapsed_s(from, to);
    ++reps;
  }
  return total / reps;
}

void fill_random(kernels::Backend& backend, Tensor t, std::uint32_t seed) {
  std::vector<float> host(static_cast<std::size_t>(t.numel()));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  for (auto& x : host) x = u(rng);
  backend.copy_to_device(Queue::compute, t, host.data(), DType::f32);
  backend.synchronize();
}

// What every measurement below works with. Each one allocates its own device buffers and frees
// them before it returns, so the profile's peak memory is the largest single measurement's.
struct Probe {
  kernels::Backend& backend;
  const ModelConfig& c;
  const ProfileOptions& options;
  DType dt;  // the backend's compute dtype

  template <typename F>
  double time(Queue queue, F&& run) const {
    return timed(backend, queue, options.seconds_per_point, std::forward<F>(run));
  }
  std::unique_ptr<kernels::DeviceBuffer> alloc(std::int64_t elements) const {
    return backend.alloc(static_cast<std::size_t>(elements) * size_of(dt));
  }
};

// The profile's identity: what it was measured on, for which model shape, when.
HardwareProfile describe(kernels::Backend& backend, const ModelConfig& c,
                         const std::string& fingerprint) {
  HardwareProfile p;
  p.fingerprint = fingerprint;
  p.backend = backend.name();
  p.description = str(backend.name(), " backend on ", processor_name(), ", ",
                      std::thread::hardware_concurrency(), " hardware threads");
  p.created = now_iso();
  p.h = c.h;
  p.h_kv = c.h_kv();
  p.n_heads = c.n_heads;
  p.head_dim = c.head_dim;
  p.ffn = c.ffn;
  p.vocab = c.vocab;
  return p;
}

// Copy bandwidth per copy size, both directions, in the store's dtype (the CPU backend converts on
// the way): B(n) of DESIGN.md §1.
void measure_copies(const Probe& probe, HardwareProfile& p) {
  auto& backend = probe.backend;
  const auto& options = probe.options;
  const DType stored = probe.c.dtype;
  const std::size_t max_elems = options.max_copy_bytes / size_of(stored);
  std::vector<std::byte> host(options.max_copy_bytes);
  auto device = probe.alloc(static_cast<std::int64_t>(max_elems));
  backend.register_host(host.data(), host.size());
  for (std::size_t bytes = options.min_copy_bytes; bytes <= options.max_copy_bytes; bytes *= 4) {
    const auto n = static_cast<std::int64_t>(bytes / size_of(stored));
    // A decode step issues its block-sized copies back to back: time a run of them (at least
    // kRunBytes, at most kRunCopies) so the figure is the per-copy cost inside a stream. One copy
    // alone on an idle queue measures the queue's wake-up instead (and an emulated link credits
    // its window from the enqueue, so small copies looked up to 20x faster than the link).
    constexpr std::size_t kRunBytes = 1 << 20, kRunCopies = 64;
    const std::size_t copies = std::clamp<std::size_t>(kRunBytes / bytes, 1, kRunCopies);
    const auto slots = static_cast<std::int64_t>(options.max_copy_bytes / bytes);  // >= 1
    const Tensor rows = device->tensor(probe.dt, slots, n);
    const auto slot = [&](std::size_t i) { return static_cast<std::int64_t>(i) % slots; };
    const auto host_at = [&](std::size_t i) {
      return host.data() + static_cast<std::size_t>(slot(i)) * bytes;
    };
    const double up = probe.time(Queue::copy, [&] {
      for (std::size_t i = 0; i < copies; ++i) {
        backend.copy_to_device(Queue::copy, rows.rows_slice(slot(i), 1), host_at(i), stored);
      }
    }) / static_cast<double>(copies);
    const double down = probe.time(Queue::copy, [&] {
      for (std::size_t i = 0; i < copies; ++i) {
        backend.copy_to_host(Queue::copy, host_at(i), stored, rows.rows_slice(slot(i), 1));
      }
    }) / static_cast<double>(copies);
    p.h2d_bytes_per_s.x.push_back(static_cast<double>(bytes));
    p.h2d_bytes_per_s.y.push_back(static_cast<double>(bytes) / up);
    p.d2h_bytes_per_s.x.push_back(static_cast<double>(bytes));
    p.d2h_bytes_per_s.y.push_back(static_cast<double>(bytes) / down);
    // On a slow (emulated) link the curve is flat long before 256 MiB: stop once one copy takes
    // longer than a few measurement periods; the curve is clamped to its last sample beyond.
    if (up > 10 * options.seconds_per_point) break;
  }
  backend.unregister_host(host.data());
}

// The recompute GEMM pair [m, h] × [h, h_kv] twice, over m: F(m) of DESIGN.md §1.
void measure_recompute(const Probe& probe, HardwareProfile& p) {
  const auto& c = probe.c;
  const DType dt = probe.dt;
  const std::int64_t max_rows = probe.options.max_rows;
  auto wk = probe.alloc(c.h_kv() * c.h);
  auto act = probe.alloc(max_rows * c.h);
  auto kv = probe.alloc(max_rows * c.h_kv());
  Tensor w = wk->tensor(dt, c.h_kv(), c.h);
  fill_random(probe.backend, w, 1);
  fill_random(probe.backend, act->tensor(dt, max_rows, c.h), 2);
  for (std::int64_t m = 1; m <= max_rows; m *= 2) {
    Tensor a = act->tensor(dt, m, c.h);
    Tensor y = kv->tensor(dt, m, c.h_kv());
    const double s = probe.time(Queue::compute, [&] {
      probe.backend.gemm(a, w, nullptr, y);
      probe.backend.gemm(a, w, nullptr, y);
    });
    p.recompute_flops_per_s.x.push_back(static_cast<double>(m));
    p.recompute_flops_per_s.y.push_back(4.0 * static_cast<double>(m * c.h * c.h_kv()) / s);
  }
}

// Attention: time per context token and per query row, from two context lengths.
void measure_attention(const Probe& probe, HardwareProfile& p) {
  const auto& c = probe.c;
  const DType dt = probe.dt;
  const std::int64_t s_small = 64, s_large = 2048, queries = 4;
  auto kbuf = probe.alloc(s_large * c.h_kv());
  auto qbuf = probe.alloc(queries * c.h);
  auto obuf = probe.alloc(queries * c.h);
  Tensor keys = kbuf->tensor(dt, s_large, c.h_kv());
  fill_random(probe.backend, keys, 3);
  fill_random(probe.backend, qbuf->tensor(dt, queries, c.h), 4);
  const kernels::AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim, 0.125f};
  const auto attend = [&](std::int64_t s, std::int64_t nq) {
    std::vector<kernels::AttnSegment> segs;
    for (std::int64_t i = 0; i < nq; ++i)
      segs.push_back({i, keys.rows_slice(0, s), keys.rows_slice(0, s)});
    return probe.time(Queue::compute, [&] {
      probe.backend.attention(qbuf->tensor(dt, nq, c.h), segs, shape, obuf->tensor(dt, nq, c.h));
    });
  };
  const double a_large = attend(s_large, queries);
  const double a_small = attend(s_small, queries);
  p.attention_s_per_token =
      std::max(0.0, (a_large - a_small) / static_cast<double>(queries * (s_large - s_small)));
  p.attention_s_per_query =
      std::max(0.0, a_small / queries - p.attention_s_per_token * static_cast<double>(s_small));
}

// The rest of a layer — norms, q/k/v/o projections and the FFN — for 1 and 8 rows: a fixed cost
// per layer and a cost per row.
void measure_layer_rest(const Probe& probe, HardwareProfile& p) {
  const auto& c = probe.c;
  const DType dt = probe.dt;
  auto& backend = probe.backend;
  const bool gated = c.arch == Arch::llama;
  auto wq = probe.alloc(c.h * c.h);
  auto wk = probe.alloc(c.h_kv() * c.h);
  auto w1 = probe.alloc(c.ffn * c.h);
  auto w2 = probe.alloc(c.ffn * c.h);
  const std::int64_t wide = 8 * std::max(c.h, c.ffn);
  auto x = probe.alloc(wide);  // layer input
  auto y = probe.alloc(wide);  // projections' and FFN's wide outputs
  auto z = probe.alloc(wide);  // FFN output, norm weights
  fill_random(backend, wq->tensor(dt, c.h, c.h), 5);
  fill_random(backend, wk->tensor(dt, c.h_kv(), c.h), 1);
  fill_random(backend, w1->tensor(dt, c.ffn, c.h), 6);
  fill_random(backend, w2->tensor(dt, c.h, c.ffn), 7);
  fill_random(backend, x->tensor(dt, 8, c.h), 8);
  fill_random(backend, z->tensor(dt, 2, c.h), 9);
  const auto layer_rest = [&](std::int64_t rows) {
    Tensor xin = x->tensor(dt, rows, c.h);
    Tensor hidden = y->tensor(dt, rows, c.ffn);
    Tensor out = z->tensor(dt, rows + 2, c.h).rows_slice(2, rows);
    Tensor norm_w = z->tensor(dt, 1, c.h);
    Tensor norm_b = z->tensor(dt, 2, c.h).rows_slice(1, 1);
    Tensor wsq = wq->tensor(dt, c.h, c.h);
    Tensor w = wk->tensor(dt, c.h_kv(), c.h);
    return probe.time(Queue::compute, [&] {
      backend.layer_norm(xin, norm_w, norm_b, 1e-5f, out);
      backend.gemm(xin, wsq, nullptr, y->tensor(dt, rows, c.h));     // q
      backend.gemm(xin, w, nullptr, y->tensor(dt, rows, c.h_kv()));  // k
      backend.gemm(xin, w, nullptr, y->tensor(dt, rows, c.h_kv()));  // v
      backend.gemm(xin, wsq, nullptr, out);                          // o
      backend.layer_norm(xin, norm_w, norm_b, 1e-5f, out);
      backend.gemm(xin, w1->tensor(dt, c.ffn, c.h), nullptr, hidden);             // fc1 / gate
      if (gated) backend.gemm(xin, w1->tensor(dt, c.ffn, c.h), nullptr, hidden);  // up
      backend.gemm(hidden, w2->tensor(dt, c.h, c.ffn), nullptr, out);             // fc2 / down
    });
  };
  const double one = layer_rest(1);
  const double eight = layer_rest(8);
  p.other_s_per_row = std::max(0.0, (eight - one) / 7.0);
  p.other_s_per_layer = std::max(0.0, one - p.other_s_per_row);
}

// The LM head: [rows, h] × [vocab, h]ᵀ once per step, for 1 and 8 rows.
void measure_head(const Probe& probe, HardwareProfile& p) {
  const auto& c = probe.c;
  const DType dt = probe.dt;
  auto x = probe.alloc(8 * c.h);
  auto head = probe.alloc(c.vocab * c.h);
  auto logits = probe.alloc(8 * c.vocab);
  fill_random(probe.backend, x->tensor(dt, 8, c.h), 8);
  fill_random(probe.backend, head->tensor(dt, c.vocab, c.h), 10);
  const auto head_time = [&](std::int64_t rows) {
    return probe.time(Queue::compute, [&] {
      probe.backend.gemm(x->tensor(dt, rows, c.h), head->tensor(dt, c.vocab, c.h), nullptr,
                         logits->tensor(dt, rows, c.vocab));
    });
  };
  const double head_one = head_time(1);
  const double head_eight = head_time(8);
  p.head_s_per_row = std::max(0.0, (head_eight - head_one) / 7.0);
  p.head_s = std::max(0.0, head_one - p.head_s_per_row);
}

// Host attention (the three-way split): K,V bytes of the store's dtype one host thread scans per
// second, for the model's head layout, in store-sized blocks of 16 rows. The rows span
// max_copy_bytes (at least 4096 tokens): a step's K,V come from memory, not from the cache, and
// over a cache-sized 16 MiB the rate read a third higher than over 256 MiB here.
void measure_host_attention(const ModelConfig& c, const ProfileOptions& options,
                            HardwareProfile& p) {
  if (options.on_progress) options.on_progress("host attention");
  constexpr std::int64_t kBlock = 16;
  const std::size_t row_bytes = static_cast<std::size_t>(c.h_kv()) * size_of(c.dtype);
  const std::int64_t tokens = std::max<std::int64_t>(
      4096, static_cast<std::int64_t>(options.max_copy_bytes / 2 / row_bytes / kBlock * kBlock));
  std::vector<std::byte> k(static_cast<std::size_t>(tokens) * row_bytes, std::byte{0x11}),
      v(k.size(), std::byte{0x22});
  std::vector<float> q(static_cast<std::size_t>(c.h), 0.01f);
  std::vector<float> partial(static_cast<std::size_t>(c.n_heads * (c.head_dim + 2)));
  HostAttnSeq seq{q.data(), {}, {}, partial.data()};
  for (std::int64_t t = 0; t < tokens; t += kBlock) {
    seq.k.push_back({k.data() + static_cast<std::size_t>(t) * row_bytes, t, kBlock});
    seq.v.push_back({v.data() + static_cast<std::size_t>(t) * row_bytes, t, kBlock});
  }
  const kernels::AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim, 0.125f};
  // One thread's unit when there are at least as many sequences as threads: whole rows.
  const auto once = [&] { host_attention_partial(seq, c.dtype, shape, 0, c.n_kv_heads); };
  once();  // warm-up
  int reps = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (reps < 32 && (elapsed < options.seconds_per_point || reps < 2)) {
    once();
    ++reps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  p.host_attn_bytes_per_s = static_cast<double>(2 * k.size()) * reps / elapsed;
  p.host_threads = options.host_threads;
}

}  // namespace

std::string hardware_fingerprint(const kernels::BackendOptions& b, const ModelConfig& c) {
  const unsigned threads =
      b.threads > 0 ? static_cast<unsigned>(b.threads) : std::thread::hardware_concurrency();
  return str(b.name, "|", processor_name(), "|threads=", threads,
             "|link_gbps=", b.emulate_link_gbps, "|latency_s=", b.emulate_link_latency_s,
             "|h=", c.h, "|h_kv=", c.h_kv(), "|ffn=", c.ffn, "|heads=", c.n_heads,
             "|dtype=", torch_name(c.dtype), "|compute=", torch_name(b.compute_dtype));
}

std::filesystem::path profile_cache_path(const std::string& fingerprint) {
  std::filesystem::path dir;
  if (const char* d = std::getenv("KVPR_CACHE_DIR"); d != nullptr && *d != '\0') {
    dir = d;
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    dir = std::filesystem::path(x) / "kvpr";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    dir = std::filesystem::path(home) / ".cache" / "kvpr";
  } else {
    dir = std::filesystem::temp_directory_path() / "kvpr";
  }
  return dir / "profiles" / (str(std::hex, std::hash<std::string>{}(fingerprint)) + ".json");
}

HardwareProfile measure_profile(kernels::Backend& backend, const ModelConfig& c,
                                const std::string& fingerprint, const ProfileOptions& options) {
  const auto note = [&](const std::string& what) {
    if (options.on_progress) options.on_progress(what);
  };
  HardwareProfile p = describe(backend, c, fingerprint);
  const Probe probe{backend, c, options, backend.compute_dtype()};
  note("copy bandwidth");
  measure_copies(probe, p);
  note("recompute GEMM rate");
  measure_recompute(probe, p);
  note("attention");
  measure_attention(probe, p);
  note("layer GEMMs");
  measure_layer_rest(probe, p);
  note("LM head");
  measure_head(probe, p);
  measure_host_attention(c, options, p);
  return p;
}

HardwareProfile cached_profile(kernels::Backend& backend,
                               const kernels::BackendOptions& backend_options,
                               const ModelConfig& config, bool remeasure,
                               const ProfileOptions& options) {
  const std::string fingerprint = hardware_fingerprint(backend_options, config);
  const auto path = profile_cache_path(fingerprint);
  if (!remeasure && std::filesystem::exists(path)) {
    auto cached = load_profile(path);
    if (cached.fingerprint == fingerprint) return cached;
  }
  auto profile = measure_profile(backend, config, fingerprint, options);
  save_profile(profile, path);
  return profile;
}

std::int64_t store_block_tokens(std::string_view backend, const ModelConfig& c) {
  if (backend == "cpu") return kvstore::kBlockTokens;
  const auto row_bytes = static_cast<std::int64_t>(c.h_kv() * size_of(c.dtype));
  std::int64_t tokens = kvstore::kBlockTokens;
  while (tokens < 256 && tokens * row_bytes < (std::int64_t{2} << 20)) tokens *= 2;
  return tokens;
}

planner::StepShape step_shape(const ModelConfig& c, std::int64_t block_tokens) {
  planner::StepShape s;
  s.n_layers = c.n_layers;
  s.h = c.h;
  s.h_kv = c.h_kv();
  s.ffn = c.ffn;
  s.gated_ffn = c.arch == Arch::llama;
  s.p = static_cast<std::int64_t>(size_of(c.dtype));
  s.block_tokens = block_tokens;
  return s;
}

}  // namespace kvpr::worker
