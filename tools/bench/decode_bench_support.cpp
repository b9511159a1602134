// See decode_bench_support.h.
#include "decode_bench_support.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "kvpr/common/error.h"

namespace kvpr::bench {

StoreRegistration::StoreRegistration(kernels::Backend& backend, kvstore::LocalKvStore& store,
                                     std::int64_t tokens)
    : backend_(backend) {
  const auto& shape = store.shape();
  const kvstore::SeqId seq = store.open();
  std::vector<Run> blocks;
  try {
    store.reserve(seq, tokens);
    // A block holds the activations, K and V of block_tokens tokens of one layer, contiguously,
    // starting at its first activation row.
    for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
      for (const auto& span : store.locate(seq, layer, kvstore::Part::act, 0, tokens)) {
        if (span.t0 % shape.block_tokens == 0) blocks.push_back({span.data, shape.block_bytes()});
      }
    }
  } catch (...) {
    store.free(seq);
    throw;
  }
  store.free(seq);
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  std::sort(blocks.begin(), blocks.end(),
            [](const Run& a, const Run& b) { return a.data < b.data; });
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> merged;  // page-aligned [begin, end)
  for (const Run& b : blocks) {
    const auto begin = reinterpret_cast<std::uintptr_t>(b.data) / page * page;
    const auto end = (reinterpret_cast<std::uintptr_t>(b.data) + b.bytes + page - 1) / page * page;
    if (!merged.empty() && begin <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, end);
    } else {
      merged.emplace_back(begin, end);
    }
  }
  for (const auto& [begin, end] : merged) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the ranges are kept as integer addresses
    auto* data = reinterpret_cast<std::byte*>(begin);
    const auto bytes = static_cast<std::size_t>(end - begin);
    if (backend_.register_host(data, bytes)) {
      runs_.push_back({data, bytes});
    } else {
      registered_ = false;
    }
  }
}

StoreRegistration::~StoreRegistration() {
  for (const Run& r : runs_) {
    try {
      backend_.unregister_host(r.data);
    } catch (const std::exception& e) {  // a destructor never throws
      std::fprintf(stderr, "kvpr-bench-decode: unregistering the store: %s\n", e.what());
    }
  }
}

std::size_t StoreRegistration::bytes() const {
  std::size_t total = 0;
  for (const Run& r : runs_) total += r.bytes;
  return total;
}

double measure_h2d(kernels::Backend& backend, const std::byte* host, std::size_t host_bytes,
                   DType dtype, std::size_t span_bytes, std::size_t total_bytes) {
  using kernels::Queue;
  const std::size_t elem = size_of(dtype);
  span_bytes = std::max(elem, std::min(span_bytes, host_bytes) / elem * elem);
  if (host == nullptr || host_bytes < span_bytes) fail("measure_h2d: no host memory to copy from");
  const auto n = static_cast<std::int64_t>(span_bytes / elem);
  const std::size_t spans = host_bytes / span_bytes;
  const DType dt = backend.compute_dtype();
  const std::size_t reps = std::max<std::size_t>(8, total_bytes / span_bytes);
  auto buffer = backend.alloc(static_cast<std::size_t>(n) * size_of(dt) * 4);
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    backend.synchronize();
    const auto start = backend.record(Queue::copy);
    for (std::size_t r = 0; r < reps; ++r) {
      const kernels::Tensor dst =
          buffer->tensor(dt, 4, n).rows_slice(static_cast<std::int64_t>(r % 4), 1);
      backend.copy_to_device(Queue::copy, dst, host + (r % spans) * span_bytes, dtype);
    }
    const auto end = backend.record(Queue::copy);
    backend.host_wait(end);
    const double s = backend.elapsed_s(start, end);
    if (s > 0) best = std::max(best, static_cast<double>(reps * span_bytes) / s);
  }
  return best;
}

double measure_gemm(kernels::Backend& backend, std::int64_t m, std::int64_t h, std::int64_t h_kv) {
  using kernels::Queue;
  const DType dt = backend.compute_dtype();
  auto bx = backend.alloc(static_cast<std::size_t>(m * h) * size_of(dt));
  auto bw = backend.alloc(static_cast<std::size_t>(2 * h_kv * h) * size_of(dt));
  auto by = backend.alloc(static_cast<std::size_t>(m * 2 * h_kv) * size_of(dt));
  const kernels::Tensor x = bx->tensor(dt, m, h);
  const kernels::Tensor w = bw->tensor(dt, 2 * h_kv, h);
  const kernels::Tensor y = by->tensor(dt, m, 2 * h_kv);
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  // Values only need to be ordinary numbers: tile one random block (filling hundreds of MiB
  // from the generator would cost seconds per shape).
  std::vector<float> block(4099);
  for (auto& v : block) v = dist(rng);
  std::vector<float> host(static_cast<std::size_t>(std::max(m, 2 * h_kv) * h));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = block[i % block.size()];
  backend.copy_to_device(Queue::compute, x, host.data(), DType::f32);
  backend.copy_to_device(Queue::compute, w, host.data(), DType::f32);
  backend.gemm(x, w, nullptr, y);  // warm-up (cuBLAS picks its kernel on the first call)
  backend.synchronize();
  const double flops =
      4.0 * static_cast<double>(m) * static_cast<double>(h) * static_cast<double>(h_kv);
  const int reps = std::clamp(static_cast<int>(2e11 / flops), 1, 50);
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    const auto start = backend.record(Queue::compute);
    for (int r = 0; r < reps; ++r) backend.gemm(x, w, nullptr, y);
    const auto end = backend.record(Queue::compute);
    backend.host_wait(end);
    const double s = backend.elapsed_s(start, end);
    if (s > 0) best = std::max(best, flops * reps / s);
  }
  return best;
}

}  // namespace kvpr::bench
