// Streams the host-resident weight matrices of a DeviceModel (throughput mode) into two device
// slots, one layer ahead: layer i loads into slot i % 2 on the copy queue once compute has released
// the layer that held it, compute waits for the load before the layer runs, and releases it after.
// With every weight resident (device fraction 1) every call is a no-op and layer(i) is the model's.
//
// Threading: the engine's thread only; the copies run on the backend's copy queue.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "kvpr/kernels/backend.h"
#include "kvpr/worker/device_model.h"

namespace kvpr::worker {

class WeightStream {
 public:
  WeightStream(const DeviceModel& model, kernels::Backend& backend);
  WeightStream(const WeightStream&) = delete;
  WeightStream& operator=(const WeightStream&) = delete;

  bool active() const { return model_.slot_bytes() > 0; }
  // Copy queue: after the release of the layer its slot held, the layer's streamed matrices.
  void load(std::int64_t layer);
  // Compute queue: later work waits until the layer's load has landed.
  void await(std::int64_t layer);
  // Compute queue: the slot may be reloaded once what was enqueued so far has run.
  void release(std::int64_t layer);
  // The layer's tensors: the model's own, with streamed matrices in their slot (loaded first).
  const DeviceLayer& layer(std::int64_t layer) const;
  // Forgets which layers the slots hold (after the queues drained).
  void reset();

 private:
  struct Slot {
    std::unique_ptr<kernels::DeviceBuffer> buffer;
    std::int64_t layer = -1;
    DeviceLayer view;
    std::shared_ptr<kernels::Event> landed, free;
  };
  Slot& slot_of(std::int64_t layer);

  const DeviceModel& model_;
  kernels::Backend& backend_;
  std::array<Slot, 2> slots_;
};

}  // namespace kvpr::worker
