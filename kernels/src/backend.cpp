// The checking front of Backend (backend.h): every op's arguments pass the one checker
// (op_checks.h) before the backend's do_* sees them.
#include "kvpr/kernels/backend.h"

#include <mutex>

#include "kvpr/common/error.h"
#include "kvpr/kernels/op_checks.h"

namespace kvpr::kernels {

// Bytes of the live buffers a backend handed out, and the budget they must stay within.
struct MemoryLedger {
  std::mutex mutex;
  std::uint64_t used = 0;
  std::uint64_t budget = 0;  // 0 = none
};

namespace {

// A backend's buffer that gives its bytes back to the ledger when freed.
class LedgerBuffer final : public DeviceBuffer {
 public:
  LedgerBuffer(std::unique_ptr<DeviceBuffer> inner, std::shared_ptr<MemoryLedger> ledger,
               std::uint64_t bytes)
      : inner_(std::move(inner)), ledger_(std::move(ledger)), bytes_(bytes) {}
  ~LedgerBuffer() override {
    inner_.reset();
    const std::lock_guard lock(ledger_->mutex);
    ledger_->used -= bytes_;
  }
  LedgerBuffer(const LedgerBuffer&) = delete;
  LedgerBuffer& operator=(const LedgerBuffer&) = delete;

  void* data() const override { return inner_->data(); }
  std::size_t bytes() const override { return inner_->bytes(); }

 private:
  std::unique_ptr<DeviceBuffer> inner_;
  std::shared_ptr<MemoryLedger> ledger_;
  std::uint64_t bytes_;
};

}  // namespace

Backend::Backend() : ledger_(std::make_shared<MemoryLedger>()) {}
Backend::~Backend() = default;

std::unique_ptr<DeviceBuffer> Backend::alloc(std::size_t bytes) {
  {
    const std::lock_guard lock(ledger_->mutex);
    if (ledger_->budget > 0 && ledger_->used + bytes > ledger_->budget) {
      raise(ErrorKind::overloaded, "device memory: ", bytes, " more bytes would take the ",
            ledger_->used, " in use past the budget of ", ledger_->budget,
            " bytes (--device-memory)");
    }
    ledger_->used += bytes;
  }
  std::unique_ptr<DeviceBuffer> inner;
  try {
    inner = do_alloc(bytes);
  } catch (...) {
    const std::lock_guard lock(ledger_->mutex);
    ledger_->used -= bytes;
    throw;
  }
  return std::make_unique<LedgerBuffer>(std::move(inner), ledger_, bytes);
}

void Backend::set_memory_budget(std::uint64_t bytes) {
  const std::lock_guard lock(ledger_->mutex);
  ledger_->budget = bytes;
}

std::uint64_t Backend::memory_budget() const {
  const std::lock_guard lock(ledger_->mutex);
  return ledger_->budget;
}

std::uint64_t Backend::memory_used() const {
  const std::lock_guard lock(ledger_->mutex);
  return ledger_->used;
}

void Backend::copy_to_device(Queue queue, Tensor dst, const void* src, DType src_dtype) {
  check_copy_to_device(dst, src);
  do_copy_to_device(queue, dst, src, src_dtype);
}

void Backend::copy_to_host(Queue queue, void* dst, DType dst_dtype, Tensor src) {
  check_copy_to_host(dst, src);
  do_copy_to_host(queue, dst, dst_dtype, src);
}

void Backend::copy_device(Queue queue, Tensor dst, Tensor src) {
  check_copy_device(dst, src);
  if (dst.data == src.data && dst.dtype == src.dtype) return;  // onto itself: nothing to do
  do_copy_device(queue, dst, src);
}

void Backend::gemm(Tensor x, Tensor w, const Tensor* bias, Tensor y) {
  check_gemm(x, w, bias, y, compute_dtype());
  do_gemm(x, w, bias, y);
}

void Backend::add(Tensor a, Tensor b, Tensor y) {
  check_binary("add", a, b, y, compute_dtype());
  do_add(a, b, y);
}

void Backend::mul(Tensor a, Tensor b, Tensor y) {
  check_binary("mul", a, b, y, compute_dtype());
  do_mul(a, b, y);
}

void Backend::activation(Act act, Tensor x) {
  check_activation(act, x, compute_dtype());
  do_activation(act, x);
}

void Backend::layer_norm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor y) {
  check_layer_norm(x, weight, bias, y, compute_dtype());
  do_layer_norm(x, weight, bias, eps, y);
}

void Backend::rms_norm(Tensor x, Tensor weight, float eps, Tensor y) {
  check_rms_norm(x, weight, y, compute_dtype());
  do_rms_norm(x, weight, eps, y);
}

void Backend::rope(Tensor x, std::span<const std::int32_t> positions, std::int64_t n_heads,
                   std::int64_t head_dim, float theta) {
  check_rope(x, positions, n_heads, head_dim, theta, compute_dtype());
  do_rope(x, positions, n_heads, head_dim, theta);
}

void Backend::embedding(Tensor table, std::span<const std::int32_t> ids, Tensor y) {
  check_embedding(table, ids, y, compute_dtype());
  do_embedding(table, ids, y);
}

void Backend::attention(Tensor q, std::span<const AttnSegment> segments, const AttnShape& shape,
                        Tensor out, const Tensor* stats) {
  check_attention(q, segments, shape, out, compute_dtype(), stats);
  do_attention(q, segments, shape, out, stats);
}

void Backend::attention_merge(Tensor out, Tensor stats, Tensor partials, const AttnShape& shape) {
  check_attention_merge(out, stats, partials, shape, compute_dtype());
  do_attention_merge(out, stats, partials, shape);
}

std::vector<std::int32_t> Backend::argmax(Tensor x) {
  check_argmax(x, compute_dtype());
  return do_argmax(x);
}

std::vector<SampledRow> Backend::sample(Tensor logits, std::span<const RowSampling> rows) {
  check_sample(logits, rows, compute_dtype());
  if (rows.empty()) return {};
  return do_sample(logits, rows);
}

}  // namespace kvpr::kernels
