// The one op checker (kvpr/kernels/op_checks.h) and the checking front of Backend: a bad call
// fails on a backend with exactly the Error the checker gives for the same arguments (so every
// backend, whose front is the same code, fails the same way), in one line, before any output is
// touched; and the checker states the compute dtype it expected, whichever that is.
#include "kvpr/kernels/op_checks.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::kernels {
namespace {

// "kind: message" of the Error f throws, or "no error".
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return str(static_cast<int>(e.kind()), ": ", e.what());
  }
  return "no error";
}

class OpChecks : public ::testing::Test {
 protected:
  Tensor make(std::int64_t rows, std::int64_t cols, DType dtype = DType::f32) {
    buffers_.push_back(backend_->alloc(static_cast<std::size_t>(rows * cols) * size_of(dtype)));
    return buffers_.back()->tensor(dtype, rows, cols);
  }
  // The backend call and the checker on the same arguments fail with the same Error, in one line.
  void expect_same(const std::string& what, const std::function<void()>& on_backend,
                   const std::function<void()>& on_checker) {
    SCOPED_TRACE(what);
    const std::string from_backend = error_of(on_backend);
    EXPECT_NE(from_backend, "no error");
    EXPECT_EQ(from_backend, error_of(on_checker));
    EXPECT_EQ(from_backend.find('\n'), std::string::npos) << from_backend;
  }

  std::unique_ptr<Backend> backend_ = make_backend(BackendOptions{});
  std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
};

TEST_F(OpChecks, BackendFailsExactlyAsTheChecker) {
  constexpr DType f32 = DType::f32;  // NOLINT(readability-identifier-naming): reads as the enum
  Backend& b = *backend_;
  const Tensor x = make(2, 3), w = make(4, 5), y = make(2, 4), sq = make(3, 3);
  expect_same(
      "gemm shapes", [&] { b.gemm(x, w, nullptr, y); }, [&] { check_gemm(x, w, nullptr, y, f32); });
  expect_same(
      "gemm overlap", [&] { b.gemm(sq, sq, nullptr, sq); },
      [&] { check_gemm(sq, sq, nullptr, sq, f32); });
  const Tensor x16 = make(2, 3, DType::f16);
  expect_same(
      "gemm dtype", [&] { b.gemm(x16, w, nullptr, y); },
      [&] { check_gemm(x16, w, nullptr, y, f32); });
  const Tensor a = make(6, 7), a_t = make(7, 6);
  expect_same(
      "add shapes", [&] { b.add(a, a_t, a); }, [&] { check_binary("add", a, a_t, a, f32); });
  expect_same(
      "mul shapes", [&] { b.mul(a, a, a_t); }, [&] { check_binary("mul", a, a, a_t, f32); });
  expect_same(
      "activation", [&] { b.activation(static_cast<Act>(9), a); },
      [&] { check_activation(static_cast<Act>(9), a, f32); });
  const Tensor n24 = make(2, 4), v3 = make(1, 3), v4 = make(1, 4);
  expect_same(
      "layer_norm weight", [&] { b.layer_norm(n24, v3, v4, 1e-5f, n24); },
      [&] { check_layer_norm(n24, v3, v4, n24, f32); });
  expect_same(
      "rms_norm y", [&] { b.rms_norm(n24, v4, 1e-5f, make(4, 2)); },
      [&] { check_rms_norm(n24, v4, make(4, 2), f32); });
  const std::vector<std::int32_t> positions = {0, -1};
  const Tensor r = make(2, 8);
  expect_same(
      "rope odd head", [&] { b.rope(r, positions, 2, 3, 1e4f); },
      [&] { check_rope(r, positions, 2, 3, 1e4f, f32); });
  expect_same(
      "rope negative position", [&] { b.rope(r, positions, 2, 4, 1e4f); },
      [&] { check_rope(r, positions, 2, 4, 1e4f, f32); });
  const std::vector<std::int32_t> ids = {0, 4};
  const Tensor table = make(4, 5), rows = make(2, 5);
  expect_same(
      "embedding id", [&] { b.embedding(table, ids, rows); },
      [&] { check_embedding(table, ids, rows, f32); });
  const AttnShape shape{4, 2, 8, 1.0f};
  const Tensor q = make(2, 32), out = make(2, 32), k = make(3, 16), v = make(3, 16);
  const std::vector<AttnSegment> only_row0 = {{0, k, v}};
  expect_same(
      "attention row without keys", [&] { b.attention(q, only_row0, shape, out); },
      [&] { check_attention(q, only_row0, shape, out, f32); });
  const std::vector<AttnSegment> mismatch = {{0, k, v}, {1, k, make(2, 16)}};
  expect_same(
      "attention segment", [&] { b.attention(q, mismatch, shape, out); },
      [&] { check_attention(q, mismatch, shape, out, f32); });
  const Tensor bf = make(2, 3, DType::bf16);
  expect_same(
      "argmax dtype", [&] { b.argmax(bf); }, [&] { check_argmax(bf, f32); });
  const Tensor big = make(4, 4);
  const Tensor shifted = big.rows_slice(1, 2), head = big.rows_slice(0, 2);
  expect_same(
      "copy_device overlap", [&] { b.copy_device(Queue::compute, shifted, head); },
      [&] { check_copy_device(shifted, head); });
  expect_same(
      "copy_to_host null", [&] { b.copy_to_host(Queue::compute, nullptr, f32, head); },
      [&] { check_copy_to_host(nullptr, head); });
  const Tensor negative{nullptr, f32, -1, 3};
  expect_same(
      "copy_to_device view", [&] { b.copy_to_device(Queue::compute, negative, nullptr, f32); },
      [&] { check_copy_to_device(negative, nullptr); });
}

// What the CUDA backend (fp16/bf16 compute) reports: the same words with its dtype.
TEST(OpCheckMessages, NameTheComputeDtype) {
  std::vector<float> storage(64);
  const Tensor x{storage.data(), DType::f32, 2, 4};
  const std::string message = error_of([&] { check_argmax(x, DType::bf16); });
  EXPECT_NE(message.find("argmax: x [2, 4] F32 is not BF16 (the backend computes in BF16)"),
            std::string::npos)
      << message;
  const AttnShape shape{4, 4, 16, 1.0f};
  const Tensor q{storage.data(), DType::f16, 1, 64};
  EXPECT_EQ(error_of([&] { check_attention(q, {}, shape, q, DType::f16); }),
            str(static_cast<int>(ErrorKind::failed),
                ": attention: query row 0 has no keys (no non-empty segment)"));
}

// A copy onto itself passes the checker and does nothing; other valid calls pass it silently.
TEST_F(OpChecks, AcceptsValidCalls) {
  const Tensor t = make(3, 4);
  EXPECT_NO_THROW(check_copy_device(t, t));
  EXPECT_NO_THROW(backend_->copy_device(Queue::compute, t, t));
  const Tensor x = make(2, 3), w = make(4, 3), bias = make(4, 1), y = make(2, 4);
  EXPECT_NO_THROW(check_gemm(x, w, &bias, y, DType::f32));
  const Tensor empty{nullptr, DType::f32, 0, 5};
  EXPECT_NO_THROW(check_argmax(empty, DType::f32));
}

}  // namespace
}  // namespace kvpr::kernels
