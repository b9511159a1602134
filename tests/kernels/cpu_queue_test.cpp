// The CPU backend's plumbing: the registry, buffers and tensor views, and its queues — dtype
// conversions through copies, ordering by events across the copy thread and the caller's compute
// queue, overlap of an (emulated) slow copy with compute, copy statistics, error propagation from
// the copy thread, and clean shutdown with work in flight. Times are only used to show ordering,
// with generous bounds; link *rates* are the benchmark's job (tools/bench/copy_link_bench.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "../../kernels/cpu/src/cpu_copy_queue.h"  // private: error propagation is tested directly
#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::unique_ptr<Backend> make_cpu(double latency_s = 0, double gbps = 0) {
  BackendOptions options;
  options.emulate_link_latency_s = latency_s;
  options.emulate_link_gbps = gbps;
  return make_backend(options);
}

std::vector<float> iota(std::size_t n, float start = 0.5f) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Runs f, expects an Error of `kind` whose one-line message contains every needle.
template <typename F>
void expect_error(F f, std::initializer_list<const char*> needles,
                  ErrorKind kind = ErrorKind::failed) {
  try {
    f();
    ADD_FAILURE() << "no Error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const char* needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos) << message;
  }
}

TEST(CpuBackend, TensorViewsCheckBounds) {
  auto backend = make_cpu();
  auto storage = backend->alloc(24 * sizeof(float));
  const Tensor t = storage->tensor(DType::f32, 4, 6);
  const Tensor s = t.rows_slice(1, 2);
  EXPECT_EQ(s.rows, 2);
  EXPECT_EQ(s.cols, 6);
  EXPECT_EQ(static_cast<char*>(s.data) - static_cast<char*>(t.data), 6 * 4);
  EXPECT_EQ(t.rows_slice(4, 0).rows, 0);
  expect_error([&] { (void)t.rows_slice(3, 2); }, {"rows_slice", "[3, 5)", "4 rows"});
  expect_error([&] { (void)t.rows_slice(-1, 1); }, {"rows_slice"});
  const Tensor r = t.reshaped(8, 3);
  EXPECT_EQ(r.data, t.data);
  EXPECT_EQ(r.rows, 8);
  expect_error([&] { (void)t.reshaped(5, 5); }, {"reshaped", "[4, 6]", "[5, 5]"});
  auto buffer = backend->alloc(100);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer->data()) % 64, 0u);
  EXPECT_EQ(buffer->tensor(DType::f16, 5, 10).bytes(), 100u);
  expect_error([&] { (void)buffer->tensor(DType::f32, 5, 10); },
               {"tensor", "[5, 10]", "100 bytes"});
  expect_error([&] { (void)buffer->tensor(DType::f32, -1, 2); }, {"tensor", "[-1, 2]"});
}

// --compute-dtype auto: a half-precision checkpoint computes in its own dtype on a GPU, in f32 on
// the CPU (the reference); an f32 checkpoint in f32 everywhere; explicit values win.
TEST(CpuBackend, ComputeDtypeAutoFollowsTheCheckpointOnAGpuOnly) {
  EXPECT_EQ(resolve_compute_dtype("auto", "cuda", DType::f16), DType::f16);
  EXPECT_EQ(resolve_compute_dtype("auto", "cuda", DType::bf16), DType::bf16);
  EXPECT_EQ(resolve_compute_dtype("auto", "cuda", DType::f32), DType::f32);
  EXPECT_EQ(resolve_compute_dtype("auto", "cpu", DType::f16), DType::f32);
  EXPECT_EQ(resolve_compute_dtype("f32", "cuda", DType::f16), DType::f32);
  EXPECT_EQ(resolve_compute_dtype("bf16", "cuda", DType::f16), DType::bf16);
  expect_error([] { (void)resolve_compute_dtype("fp8", "cuda", DType::f16); },
               {"--compute-dtype", "'fp8'"});
}

TEST(CpuBackend, RegistryMakesBackendsByName) {
  const auto backend = make_backend(BackendOptions{});
  EXPECT_EQ(backend->name(), "cpu");
  EXPECT_EQ(backend->compute_dtype(), DType::f32);
  EXPECT_GT(backend->nominal_rates().h2d_bytes_per_s, 0);
  EXPECT_GT(backend->nominal_rates().gemm_flops_per_s, 0);
  BackendOptions slow;
  slow.emulate_link_gbps = 2.5;
  EXPECT_DOUBLE_EQ(make_backend(slow)->nominal_rates().h2d_bytes_per_s, 2.5e9);

  BackendOptions tpu;
  tpu.name = "tpu";
  expect_error([&] { make_backend(tpu); }, {"'tpu'", "cpu"});
  const auto names = backend_names();
  if (std::find(names.begin(), names.end(), "cuda") == names.end()) {
    BackendOptions cuda;
    cuda.name = "cuda";
    expect_error([&] { make_backend(cuda); }, {"cuda", "KVPR_CUDA=ON"}, ErrorKind::unimplemented);
  }
  BackendOptions negative;
  negative.emulate_link_gbps = -1;
  expect_error([&] { make_backend(negative); }, {"-1"});
}

class Conversions : public ::testing::TestWithParam<Queue> {};

TEST_P(Conversions, HalfAndBfloatHostDataRoundTripThroughF32) {
  const Queue queue = GetParam();
  auto backend = make_cpu();
  auto buffer = backend->alloc(64 * sizeof(float));
  const Tensor t = buffer->tensor(DType::f32, 8, 8);
  std::vector<float> values(64);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = (float(i) - 31.5f) * 0.37f;
  for (const DType dtype : {DType::f16, DType::bf16}) {
    std::vector<std::uint16_t> host(64), back(64);
    convert(values.data(), DType::f32, host.data(), dtype, 64);
    backend->copy_to_device(queue, t, host.data(), dtype);
    std::vector<float> device(64);
    backend->copy_to_host(queue, device.data(), DType::f32, t);
    backend->copy_to_host(queue, back.data(), dtype, t);
    backend->synchronize();
    for (std::size_t i = 0; i < 64; ++i) {
      const float expected = dtype == DType::f16 ? f16_to_f32(host[i]) : bf16_to_f32(host[i]);
      ASSERT_EQ(device[i], expected) << i;  // widening is exact
      ASSERT_EQ(back[i], host[i]) << i;     // and narrowing it back restores the bits
    }
  }
  // f32 device data narrowed on the way out rounds to nearest even.
  backend->copy_to_device(queue, t, values.data(), DType::f32);
  std::vector<std::uint16_t> half(64);
  backend->copy_to_host(queue, half.data(), DType::f16, t);
  backend->synchronize();
  for (std::size_t i = 0; i < 64; ++i) ASSERT_EQ(half[i], f32_to_f16(values[i])) << i;
}

INSTANTIATE_TEST_SUITE_P(BothQueues, Conversions, ::testing::Values(Queue::compute, Queue::copy));

TEST(CpuQueue, ChainOfCopiesThenComputeWaitSeesTheData) {
  auto backend = make_cpu(0.02);  // the copy thread lags the caller by 20 ms a copy
  auto a = backend->alloc(256 * sizeof(float)), b = backend->alloc(256 * sizeof(float));
  const Tensor ta = a->tensor(DType::f32, 16, 16), tb = b->tensor(DType::f32, 16, 16);
  const std::vector<float> source = iota(256);
  std::vector<float> result(256, -1.0f);
  backend->copy_to_device(Queue::copy, ta, source.data(), DType::f32);
  backend->copy_device(Queue::copy, tb, ta);
  backend->copy_to_host(Queue::copy, result.data(), DType::f32, tb);
  const auto done = backend->record(Queue::copy);
  backend->wait(Queue::compute, done);  // the compute queue is the caller: it blocks here
  EXPECT_EQ(result, source);

  // Copy → compute → copy, ordered only by events.
  backend->copy_to_device(Queue::copy, ta, source.data(), DType::f32);
  backend->wait(Queue::compute, backend->record(Queue::copy));
  backend->add(ta, ta, tb);
  backend->wait(Queue::copy, backend->record(Queue::compute));
  backend->copy_to_host(Queue::copy, result.data(), DType::f32, tb);
  backend->host_wait(backend->record(Queue::copy));
  for (std::size_t i = 0; i < 256; ++i) ASSERT_EQ(result[i], 2 * source[i]) << i;
}

TEST(CpuQueue, SlowCopyOverlapsCompute) {
  constexpr double kLatency = 0.3;
  auto backend = make_cpu(kLatency);
  auto dev = backend->alloc(1024 * sizeof(float));
  const Tensor t = dev->tensor(DType::f32, 32, 32);
  const std::vector<float> source = iota(1024);

  const auto t0 = Clock::now();
  const auto before = backend->record(Queue::copy);
  backend->copy_to_device(Queue::copy, t, source.data(), DType::f32);
  const auto after = backend->record(Queue::copy);
  EXPECT_LT(seconds_since(t0), kLatency / 3) << "enqueueing a copy must not wait for it";

  // Compute on other memory runs now, on this thread, while the copy is in flight.
  auto other = backend->alloc(1024 * sizeof(float));
  const Tensor u = other->tensor(DType::f32, 32, 32);
  backend->copy_to_device(Queue::compute, u, source.data(), DType::f32);
  backend->add(u, u, u);
  const auto computed = backend->record(Queue::compute);
  EXPECT_LT(seconds_since(t0), kLatency / 3) << "compute must not wait for the copy queue";
  EXPECT_THROW((void)backend->elapsed_s(before, after), Error) << "the copy cannot be done yet";

  backend->host_wait(after);
  EXPECT_GE(seconds_since(t0), kLatency * 0.9);
  EXPECT_GE(backend->elapsed_s(before, after), kLatency * 0.9);
  EXPECT_LT(backend->elapsed_s(computed, after), kLatency * 1.5);
  EXPECT_GT(backend->elapsed_s(computed, after), 0.0) << "compute finished before the copy";
}

TEST(CpuQueue, EventsOnTheCopyQueueCompleteInOrder) {
  auto backend = make_cpu();
  auto dev = backend->alloc(4096);
  const Tensor t = dev->tensor(DType::f32, 1, 1024);
  const std::vector<float> source = iota(1024);
  std::vector<std::shared_ptr<Event>> events;
  for (int i = 0; i < 500; ++i) {
    backend->copy_to_device(Queue::copy, t, source.data(), DType::f32);
    events.push_back(backend->record(Queue::copy));
  }
  backend->host_wait(events.back());
  for (std::size_t i = 1; i < events.size(); ++i) {
    ASSERT_GE(backend->elapsed_s(events[i - 1], events[i]), 0.0) << i;
  }
}

TEST(CpuQueue, CountsBytesPerDirection) {
  auto backend = make_cpu(0.001);
  auto dev = backend->alloc(200 * sizeof(float));
  const Tensor t = dev->tensor(DType::f32, 10, 10);
  const Tensor u = dev->tensor(DType::f32, 20, 10).rows_slice(10, 10);
  std::vector<std::uint16_t> half(100);
  std::vector<float> full(100, 1.0f);
  backend->copy_to_device(Queue::copy, t, full.data(), DType::f32);  // 400 B in
  backend->copy_to_host(Queue::copy, half.data(), DType::bf16, t);   // 200 B out
  backend->copy_device(Queue::copy, u, t);                           // no host bytes
  backend->synchronize();
  CopyStats stats = backend->copy_stats();
  EXPECT_EQ(stats.h2d_bytes, 400u);
  EXPECT_EQ(stats.d2h_bytes, 200u);
  EXPECT_EQ(stats.copies, 3u);
  EXPECT_GE(stats.busy_s, 0.002) << "two throttled copies of at least 1 ms each";
  const double busy = stats.busy_s;
  backend->copy_to_device(Queue::compute, t, half.data(), DType::f16);  // 200 B in, not busy time
  stats = backend->copy_stats();
  EXPECT_EQ(stats.h2d_bytes, 600u);
  EXPECT_EQ(stats.copies, 4u);
  EXPECT_EQ(stats.busy_s, busy);
}

TEST(CpuQueue, RejectsBadArguments) {
  auto backend = make_cpu();
  auto dev = backend->alloc(16 * sizeof(float));
  const Tensor t = dev->tensor(DType::f32, 4, 4);
  EXPECT_THROW(backend->copy_to_device(Queue::copy, t, nullptr, DType::f32), Error);
  EXPECT_THROW(backend->copy_to_host(Queue::copy, nullptr, DType::f32, t), Error);
  EXPECT_THROW(backend->copy_device(Queue::copy, t, t.rows_slice(0, 2)), Error);
  expect_error([&] { backend->copy_device(Queue::copy, t.rows_slice(1, 2), t.rows_slice(0, 2)); },
               {"copy_device", "overlap"});
  backend->copy_device(Queue::copy, t, t);  // onto itself: allowed, nothing to do
  EXPECT_THROW(backend->host_wait(nullptr), Error);
  EXPECT_THROW(backend->wait(Queue::copy, nullptr), Error);
  struct ForeignEvent : Event {};
  EXPECT_THROW(backend->wait(Queue::compute, std::make_shared<ForeignEvent>()), Error);
  try {
    backend->copy_device(Queue::compute, t, t.rows_slice(0, 2));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 4]"), std::string::npos) << e.what();
  }
  backend->synchronize();  // nothing bad was enqueued
}

TEST(CpuQueue, DestructorDrainsWorkInFlight) {
  std::vector<float> result(64, 0.0f);
  const std::vector<float> source = iota(64);
  const auto t0 = Clock::now();
  {
    std::unique_ptr<DeviceBuffer> dev;  // declared first, so destroyed after the backend
    auto backend = make_cpu(0.05);
    dev = backend->alloc(64 * sizeof(float));
    const Tensor t = dev->tensor(DType::f32, 8, 8);
    backend->copy_to_device(Queue::copy, t, source.data(), DType::f32);
    backend->copy_to_host(Queue::copy, result.data(), DType::f32, t);
  }  // ~backend drains both copies before dev goes
  EXPECT_GE(seconds_since(t0), 0.09);
  EXPECT_EQ(result, source);
}

TEST(CpuCopyQueue, FirstTaskErrorIsRethrownOnceAndTheQueueGoesOn) {
  cpu::CopyQueue queue(cpu::LinkEmulation{});
  int ran = 0;
  queue.enqueue_copy(cpu::CopyKind::device_to_device, 0,
                     [] { throw Error(ErrorKind::failed, "first"); });
  queue.enqueue_copy(cpu::CopyKind::device_to_device, 0,
                     [] { throw std::runtime_error("second"); });
  queue.enqueue_copy(cpu::CopyKind::device_to_device, 0, [&] { ++ran; });
  const auto marker = queue.enqueue_marker();
  try {
    queue.drain();
    ADD_FAILURE() << "drain did not rethrow";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "first");
  }
  EXPECT_TRUE(marker->done());
  EXPECT_EQ(ran, 1);
  EXPECT_NO_THROW(queue.drain()) << "an error is reported once";
  EXPECT_EQ(queue.stats().copies, 3u);
}

TEST(CpuCopyQueue, WaitTaskHoldsLaterTasks) {
  cpu::CopyQueue queue(cpu::LinkEmulation{});
  auto gate = std::make_shared<cpu::CpuEvent>();
  bool copied = false;
  queue.enqueue_wait(gate);
  queue.enqueue_copy(cpu::CopyKind::device_to_device, 0, [&] { copied = true; });
  const auto marker = queue.enqueue_marker();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(marker->done());
  gate->complete();
  marker->wait();
  EXPECT_TRUE(copied);
}

}  // namespace
}  // namespace kvpr::kernels
