#include "embedded.h"

#include <charconv>

#include "kvpr/common/error.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/worker/profiler.h"
#include "planning.h"

namespace kvpr::cli {

kernels::BackendOptions backend_options(const BackendFlags& flags, DType checkpoint) {
  if (flags.emulate_link_gbps < 0)
    fail("--emulate-link-gbps must be >= 0, got ", flags.emulate_link_gbps);
  if (flags.emulate_link_latency_us < 0) {
    fail("--emulate-link-latency-us must be >= 0, got ", flags.emulate_link_latency_us);
  }
  kernels::BackendOptions options;
  options.name = flags.backend;
  options.emulate_link_gbps = flags.emulate_link_gbps;
  options.emulate_link_latency_s = flags.emulate_link_latency_us * 1e-6;
  options.threads = flags.threads;
  options.device_memory = flags.device.device_memory;
  options.compute_dtype =
      kernels::resolve_compute_dtype(flags.compute_dtype, flags.backend, checkpoint);
  return options;
}

std::optional<std::int64_t> parse_split(const std::string& split) {
  if (split == "auto") return std::nullopt;
  std::int64_t value = -1;
  const auto* end = split.data() + split.size();
  const auto [ptr, ec] = std::from_chars(split.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0) {
    fail("--split must be 'auto' or a non-negative token count, got '", split, "'");
  }
  return value;
}

SplitRequest parse_split_request(const std::string& split) {
  const auto colon = split.find(':');
  if (colon == std::string::npos) return {parse_split(split), std::nullopt};
  SplitRequest out;
  out.l = parse_split(split.substr(0, colon));
  const std::string m = split.substr(colon + 1);
  std::int64_t value = -1;
  const auto* end = m.data() + m.size();
  const auto [ptr, ec] = std::from_chars(m.data(), end, value);
  if (m.empty() || ec != std::errc() || ptr != end || value < 0) {
    fail("--split L:M needs a non-negative host split M, got '", split, "'");
  }
  if (out.l && *out.l > value) fail("--split L:M needs L <= M, got '", split, "'");
  out.m = value;
  return out;
}

Embedded::Embedded(const std::string& model_dir, const BackendFlags& flags, planner::Policy policy,
                   std::optional<std::int64_t> split, std::uint64_t capacity_bytes,
                   bool show_progress, const std::string& planner_kind)
    : checkpoint(model_dir),
      backend(kernels::make_backend(backend_options(flags, checkpoint.config().dtype))) {
  const ModelConfig& c = checkpoint.config();
  const DeviceFlags& device = flags.device;
  if (device.micro_batches < 1)
    fail("--micro-batches must be at least 1, got ", device.micro_batches);
  worker::WeightPlacement placement;
  if (device.weight_fraction == "auto") {
    placement.device_fraction = std::nullopt;
    placement.reserve_bytes = worker::working_set_bytes(
        c, device.batch, device.context > 0 ? device.context : c.max_positions,
        device.micro_batches, backend->compute_dtype());
  } else {
    double f = -1;
    const auto& text = device.weight_fraction;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), f);
    if (ec != std::errc() || ptr != text.data() + text.size() || !(f >= 0 && f <= 1))
      fail("--weight-fraction must be 'auto' or a number in [0, 1], got '", text, "'");
    placement.device_fraction = f;
  }
  model = std::make_unique<worker::DeviceModel>(checkpoint, *backend, show_progress, placement);
  kvstore::StoreShape shape;
  shape.n_layers = c.n_layers;
  shape.h = c.h;
  shape.h_kv = c.h_kv();
  shape.dtype = c.dtype;
  shape.block_tokens = worker::store_block_tokens(flags.backend, c);
  store = std::make_unique<kvstore::LocalKvStore>(shape, capacity_bytes);
  // K,V and activations move straight between the store's memory and the device.
  if (store->arena() != nullptr) backend->register_host(store->arena(), store->arena_bytes());
  if (planner_kind == "nominal") {
    planner = std::make_unique<planner::CostModelPlanner>();
  } else if (planner_kind == "measured") {
    auto profile = measured_profile(flags, c, false);
    auto scheduler = std::make_unique<planner::ProfilePlanner>(
        profile, worker::step_shape(c, shape.block_tokens));
    const auto path = worker::profile_cache_path(profile.fingerprint);
    corrector = std::make_unique<worker::ProfileCorrector>(
        std::move(profile), worker::step_shape(c, shape.block_tokens), planner::DriftOptions{},
        [p = scheduler.get()](const HardwareProfile& refit) { p->update_profile(refit); }, path);
    planner = std::move(scheduler);
  } else {
    fail("--planner must be nominal or measured, got '", planner_kind, "'");
  }
  worker::EngineOptions engine_options{policy, split};
  engine_options.micro_batches = device.micro_batches;
  engine = std::make_unique<worker::Engine>(*model, *backend, *store, *planner, engine_options);
}

Embedded::~Embedded() {
  engine.reset();  // drains the backend's queues
  if (store && store->arena() != nullptr) backend->unregister_host(store->arena());
}

}  // namespace kvpr::cli
