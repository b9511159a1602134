// See upload_ring.h.
#include "upload_ring.h"

#include <algorithm>
#include <cstring>

#include "cuda_check.h"

namespace kvpr::kernels::cuda {
namespace {

constexpr std::size_t kAlign = 256;

std::size_t align_up(std::size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

}  // namespace

UploadRing::UploadRing(cudaStream_t stream, std::size_t capacity)
    : stream_(stream), capacity_(align_up(capacity)), host_(capacity_), device_(capacity_) {}

void UploadRing::close_open_region() {
  if (!open_) return;
  EventHandle event = spare_.empty() ? EventHandle(false) : std::move(spare_.back());
  if (!spare_.empty()) spare_.pop_back();
  check(cudaEventRecord(event.get(), stream_), "cudaEventRecord");
  closed_.push_back({open_begin_, open_end_, std::move(event)});
  open_ = false;
}

void UploadRing::wait_for(std::size_t begin, std::size_t end) {
  // The newest closed region that overlaps [begin, end): once its event has completed, so have
  // those of every older region (one stream, in order), and all of them can be reused.
  std::size_t last = closed_.size();
  for (std::size_t i = 0; i < closed_.size(); ++i) {
    if (closed_[i].begin < end && begin < closed_[i].end) last = i;
  }
  if (last == closed_.size()) return;
  check(cudaEventSynchronize(closed_[last].closed.get()), "cudaEventSynchronize");
  for (std::size_t i = 0; i <= last; ++i) {
    spare_.push_back(std::move(closed_.front().closed));
    closed_.pop_front();
  }
}

void* UploadRing::upload(const void* data, std::size_t bytes) {
  close_open_region();
  const std::size_t n = std::max<std::size_t>(align_up(bytes), kAlign);
  if (n > capacity_) {
    // Rare (a prefill of tens of thousands of tokens): drain, then replace both rings.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    closed_.clear();
    capacity_ = std::max(n, 2 * capacity_);
    host_ = PinnedMemory(capacity_);
    device_ = DeviceMemory(capacity_);
    head_ = 0;
  }
  std::size_t at = head_;
  if (at + n > capacity_) at = 0;
  wait_for(at, at + n);
  auto* host = static_cast<std::byte*>(host_.data()) + at;
  auto* device = static_cast<std::byte*>(device_.data()) + at;
  if (bytes > 0) std::memcpy(host, data, bytes);
  check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
  open_ = true;
  open_begin_ = at;
  open_end_ = at + n;
  head_ = at + n;
  return device;
}

}  // namespace kvpr::kernels::cuda
