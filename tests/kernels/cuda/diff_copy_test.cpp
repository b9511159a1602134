// The CUDA backend's copies, queues and events against the host reference (kvpr::convert, the
// same function the CPU backend's copies use): dtype conversion both ways and on the device,
// every kind of host memory (pageable through pinned staging, registered with cudaHostRegister),
// copies larger than a staging buffer, cross-queue ordering with events, the copy counters, and
// dropping a buffer while copies into it are still queued. Without a usable CUDA device every
// case skips and says why.
#include <sys/mman.h>

#include <cstring>

#include "cuda_test_util.h"

namespace kvpr::kernels {
namespace {

using cuda_test::expect_close;
using cuda_test::Pair;
using cuda_test::random_values;

// Host bytes holding `v` as `dtype`.
std::vector<std::byte> as_bytes(const std::vector<float>& v, DType dtype) {
  std::vector<std::byte> out(v.size() * size_of(dtype));
  convert(v.data(), DType::f32, out.data(), dtype, v.size());
  return out;
}

// What a value stored as `from` becomes after passing through `via`, read back as f32.
std::vector<float> through(const std::vector<float>& v, DType from, DType via) {
  std::vector<float> out = v;
  cuda_test::round_to(from, out);
  cuda_test::round_to(via, out);
  return out;
}

// Page-aligned anonymous memory, as the host KV store maps its arena.
struct Mapped {
  explicit Mapped(std::size_t n) : bytes(n) {
    data = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) data = nullptr;
  }
  ~Mapped() {
    if (data != nullptr) munmap(data, bytes);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  void* data = nullptr;
  std::size_t bytes = 0;
};

class CudaCopies : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    KVPR_SKIP_WITHOUT_CUDA();
    pair_ = std::make_unique<Pair>(GetParam());
  }
  Backend& cuda() { return *pair_->cuda.backend; }
  std::unique_ptr<Pair> pair_;
};

TEST_P(CudaCopies, ConvertEveryDtypePairOnBothQueuesFromPageableMemory) {
  const DType dt = GetParam();
  // 3 Mi elements: fp32 copies span several 4 MiB staging buffers.
  const auto v = random_values(std::size_t{3} << 20, 31, 10.0f);
  for (Queue queue : {Queue::compute, Queue::copy}) {
    for (DType host : {DType::f32, DType::f16, DType::bf16}) {
      SCOPED_TRACE(::testing::Message() << "host " << safetensors_name(host) << " queue "
                                        << (queue == Queue::copy ? "copy" : "compute"));
      const auto src = as_bytes(v, host);
      const Tensor t = pair_->cuda.alloc(1024, static_cast<std::int64_t>(v.size()) / 1024);
      cuda().copy_to_device(queue, t, src.data(), host);
      for (DType back : {DType::f32, DType::f16, DType::bf16}) {
        std::vector<std::byte> dst(v.size() * size_of(back));
        cuda().copy_to_host(queue, dst.data(), back, t);
        cuda().synchronize();
        std::vector<float> got(v.size());
        convert(dst.data(), back, got.data(), DType::f32, v.size());
        expect_close(got, through(through(v, host, dt), dt, back), 0, 0, "round trip");
      }
    }
  }
}

TEST_P(CudaCopies, RegisteredHostMemoryIsCopiedDirectly) {
  const DType dt = GetParam();
  const std::size_t n = std::size_t{1} << 20;
  Mapped store(n * 2 * sizeof(float));
  ASSERT_NE(store.data, nullptr);
  ASSERT_TRUE(cuda().register_host(store.data, store.bytes)) << "cudaHostRegister refused";
  const auto v = random_values(n, 32);
  convert(v.data(), DType::f32, store.data, DType::f16, n);  // the store holds fp16 rows
  const Tensor t = pair_->cuda.alloc(1, static_cast<std::int64_t>(n));
  cuda().copy_to_device(Queue::copy, t, store.data, DType::f16);
  auto* back = static_cast<std::byte*>(store.data) + n * sizeof(float);
  cuda().copy_to_host(Queue::copy, back, DType::f16, t);
  cuda().synchronize();
  std::vector<float> got(n);
  convert(back, DType::f16, got.data(), DType::f32, n);
  expect_close(got, through(through(v, DType::f16, dt), dt, DType::f16), 0, 0, "registered");
  cuda().unregister_host(store.data);
  cuda().unregister_host(store.data);  // no longer registered: ignored, as after a failed register
  // Copies from the same memory now take the staging path and still land.
  cuda().copy_to_device(Queue::copy, t, store.data, DType::f16);
  std::vector<float> again(n);
  cuda().copy_to_host(Queue::copy, again.data(), DType::f32, t);
  cuda().synchronize();
  expect_close(again, through(through(v, DType::f16, dt), dt, DType::f32), 0, 0, "unregistered");
}

TEST_P(CudaCopies, CopyDeviceConvertsAndRejectsOverlap) {
  const auto v = random_values(5000, 33);
  const Tensor a = pair_->cuda.put(v, 50, 100);
  auto other = cuda().alloc(v.size() * 4);
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor b = other->tensor(d, 100, 50);
    cuda().copy_device(Queue::copy, b, a);
    std::vector<float> got(v.size());
    cuda().copy_to_host(Queue::copy, got.data(), DType::f32, b);
    cuda().synchronize();
    expect_close(got, through(through(v, GetParam(), GetParam()), GetParam(), d), 0, 0,
                 "copy_device");
  }
  EXPECT_THROW(cuda().copy_device(Queue::compute, a.rows_slice(1, 10), a.rows_slice(0, 10)), Error);
  cuda().copy_device(Queue::compute, a, a);  // onto itself: allowed, nothing to do
}

TEST_P(CudaCopies, EventsOrderTheTwoQueues) {
  const std::int64_t rows = 256, cols = 4096;
  const auto x = random_values(static_cast<std::size_t>(rows * cols), 34);
  const auto y = random_values(static_cast<std::size_t>(rows * cols), 35);
  const Tensor tx = pair_->cuda.alloc(rows, cols);
  const Tensor ty = pair_->cuda.put(y, rows, cols);
  cuda().synchronize();
  const auto start = cuda().record(Queue::copy);
  cuda().copy_to_device(Queue::copy, tx, x.data(), DType::f32);
  const auto landed = cuda().record(Queue::copy);
  cuda().wait(Queue::compute, landed);
  cuda().add(tx, ty, ty);
  cuda().wait(Queue::copy, cuda().record(Queue::compute));
  std::vector<float> got(x.size());
  cuda().copy_to_host(Queue::copy, got.data(), DType::f32, ty);
  const auto done = cuda().record(Queue::copy);
  cuda().host_wait(done);
  std::vector<float> want(x.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    std::vector<float> pair = {x[i], y[i]};
    cuda_test::round_to(GetParam(), pair);
    want[i] = pair[0] + pair[1];
  }
  cuda_test::round_to(GetParam(), want);
  expect_close(got, want, 0, 0, "ordered add");
  EXPECT_GT(cuda().elapsed_s(start, done), 0.0);
  EXPECT_GE(cuda().elapsed_s(start, landed), 0.0);
}

TEST_P(CudaCopies, CountsBytesAndBusyTime) {
  const auto before = cuda().copy_stats();
  const std::size_t n = std::size_t{1} << 22;
  const std::vector<std::byte> src(n * 2);
  const Tensor t = pair_->cuda.alloc(1, static_cast<std::int64_t>(n));
  cuda().copy_to_device(Queue::copy, t, src.data(), DType::f16);
  std::vector<std::byte> dst(n * 2);
  cuda().copy_to_host(Queue::copy, dst.data(), DType::bf16, t);
  cuda().synchronize();
  const auto after = cuda().copy_stats();
  EXPECT_EQ(after.h2d_bytes - before.h2d_bytes, n * 2);
  EXPECT_EQ(after.d2h_bytes - before.d2h_bytes, n * 2);
  EXPECT_EQ(after.copies - before.copies, 2u);
  EXPECT_GT(after.busy_s, before.busy_s);
}

TEST_P(CudaCopies, DroppingABufferWithCopiesInFlightIsSafe) {
  const auto v = random_values(std::size_t{8} << 20, 36);
  for (int i = 0; i < 4; ++i) {
    auto buffer = cuda().alloc(v.size() * 4);
    cuda().copy_to_device(Queue::copy,
                          buffer->tensor(GetParam(), 1, static_cast<std::int64_t>(v.size())),
                          v.data(), DType::f32);
  }  // each buffer is released while its copy may still be queued
  cuda().synchronize();
  const Tensor t = pair_->cuda.put(v, 1, static_cast<std::int64_t>(v.size()));
  const auto got = pair_->cuda.get(t);
  expect_close(got, through(v, GetParam(), GetParam()), 0, 0, "after drops");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaCopies, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         cuda_test::dtype_name);

}  // namespace
}  // namespace kvpr::kernels
