#include "kvpr/worker/weight_stream.h"

#include "kvpr/common/error.h"

namespace kvpr::worker {

using kernels::Queue;

WeightStream::WeightStream(const DeviceModel& model, kernels::Backend& backend)
    : model_(model), backend_(backend) {}

WeightStream::Slot& WeightStream::slot_of(std::int64_t layer) {
  return slots_[static_cast<std::size_t>(layer % 2)];
}

void WeightStream::load(std::int64_t layer) {
  if (!active()) return;
  Slot& slot = slot_of(layer);
  if (!slot.buffer) slot.buffer = backend_.alloc(model_.slot_bytes());
  if (slot.free) backend_.wait(Queue::copy, slot.free);
  slot.view = model_.layer(layer);
  const DType dt = backend_.compute_dtype();
  auto* base = static_cast<std::byte*>(slot.buffer->data());
  for (const StreamedMatrix& m : model_.streamed(layer)) {
    Tensor dst{base + m.offset, dt, m.rows, m.cols};
    backend_.copy_to_device(Queue::copy, dst, m.host, m.host_dtype);
    layer_linear(slot.view, m.index).w = dst;
  }
  slot.layer = layer;
  slot.landed = backend_.record(Queue::copy);
}

void WeightStream::await(std::int64_t layer) {
  if (!active()) return;
  Slot& slot = slot_of(layer);
  if (slot.layer != layer) fail("weights of layer ", layer, " were not loaded before it ran");
  backend_.wait(Queue::compute, slot.landed);
}

void WeightStream::release(std::int64_t layer) {
  if (!active()) return;
  slot_of(layer).free = backend_.record(Queue::compute);
}

const DeviceLayer& WeightStream::layer(std::int64_t layer) const {
  if (!active()) return model_.layer(layer);
  const Slot& slot = slots_[static_cast<std::size_t>(layer % 2)];
  if (slot.layer != layer) fail("weights of layer ", layer, " are not in their slot");
  return slot.view;
}

void WeightStream::reset() {
  for (Slot& slot : slots_) {
    slot.layer = -1;  // `free` stays: the next load still waits for the last release
    slot.landed.reset();
  }
}

}  // namespace kvpr::worker
