// The worker's hardware profiler: measures on its backend what the planner's cost model needs —
// copy bandwidth per transfer size in both directions, the recompute GEMM rate per row count for
// the model's shape, attention time per context token, and the rest of a layer — and caches the
// result on disk under a fingerprint of everything the numbers depend on.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "kvpr/common/model_config.h"
#include "kvpr/common/profile.h"
#include "kvpr/kernels/backend.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::worker {

struct ProfileOptions {
  std::size_t min_copy_bytes = 256;
  std::size_t max_copy_bytes = 256ull << 20;
  std::int64_t max_rows = 4096;  // largest m of the recompute GEMM curve
  double seconds_per_point =
      0.05;  // repeat a measurement until it took this long (at most 32 times)
  std::function<void(const std::string&)> on_progress;
  int host_threads = 1;  // the host-attention threads plans may count on (HardwareProfile)
};

// What a profile's numbers depend on: backend, processor, threads, link emulation, model shape.
std::string hardware_fingerprint(const kernels::BackendOptions& backend, const ModelConfig& config);

// <cache dir>/profiles/<fingerprint hash>.json; the cache dir is $KVPR_CACHE_DIR, else
// $XDG_CACHE_HOME/kvpr, else ~/.cache/kvpr.
std::filesystem::path profile_cache_path(const std::string& fingerprint);

HardwareProfile measure_profile(kernels::Backend& backend, const ModelConfig& config,
                                const std::string& fingerprint, const ProfileOptions& options);

// The model's shape as the scheduler sees it (s and l left empty).
planner::StepShape step_shape(const ModelConfig& config, std::int64_t block_tokens);

// Tokens per block of a store this backend fetches from. Each block is one host→device copy per
// part, and on a GPU a copy of 128 KiB (16 tokens of a 4096-wide fp16 K) crosses PCIe at a fifth of
// the link's rate (11 against 51 GB/s on an H200), so for "cuda" a block holds the fewest tokens, a
// power of two from 16 to 256, whose K part reaches 2 MiB. The CPU backend keeps
// kvstore::kBlockTokens (its copies are memcpy, or an emulated link without per-copy cost).
std::int64_t store_block_tokens(std::string_view backend, const ModelConfig& config);

// The cached profile for this fingerprint, or a fresh measurement that is then cached.
HardwareProfile cached_profile(kernels::Backend& backend,
                               const kernels::BackendOptions& backend_options,
                               const ModelConfig& config, bool remeasure,
                               const ProfileOptions& options);

}  // namespace kvpr::worker
