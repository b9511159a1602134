// A measured hardware profile: what one worker's device can do, as curves rather than constants
// (copy bandwidth falls for small transfers; a GEMM is slower per row for small m). Measured by
// the worker's profiler, cached on disk by hardware fingerprint, read by the planner's cost model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvpr {

// y(x) sampled at increasing x, interpolated linearly in log2(x) between samples and clamped to
// the end samples outside them.
struct Curve {
  std::vector<double> x;
  std::vector<double> y;

  double at(double at_x) const;
  bool empty() const { return x.empty(); }
};

struct HardwareProfile {
  std::string
      fingerprint;  // backend, processor, threads, link emulation: what the numbers depend on
  std::string backend;
  std::string description;  // for people: the machine and settings
  std::string created;      // ISO-8601 UTC

  // The model shape the compute curves were measured for.
  std::int64_t h = 0;
  std::int64_t h_kv = 0;
  std::int64_t n_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t ffn = 0;

  Curve h2d_bytes_per_s;  // x = bytes of one copy (per-copy latency included)
  Curve d2h_bytes_per_s;  // x = bytes of one copy
  Curve
      recompute_flops_per_s;  // x = rows m of the [m, h] × [h, 2·h_kv] recompute (4·m·h·h_kv FLOPs)
  double attention_s_per_token = 0;  // one layer, per context token of one query (all heads)
  double attention_s_per_query = 0;  // one layer, fixed cost per query row
  double other_s_per_layer = 0;      // the rest of a layer (norms, q/k/v/o projections, FFN): fixed
  double other_s_per_row = 0;        // ... and per batch row
  std::int64_t vocab = 0;            // the LM head the next two were measured for
  double head_s = 0;                 // final norm + LM head once per step: fixed
  double head_s_per_row = 0;         // ... and per batch row
  // Host attention (the three-way split): K,V bytes (store dtype) one host thread scans per second
  // for the model's head layout, and the threads the worker may use; 0: not measured (no tokens
  // are planned on the host).
  double host_attn_bytes_per_s = 0;
  std::int64_t host_threads = 0;

  std::string to_json() const;
  static HardwareProfile from_json(const std::string& text, const std::string& origin);
};

void save_profile(const HardwareProfile& profile, const std::filesystem::path& path);
HardwareProfile load_profile(const std::filesystem::path& path);

}  // namespace kvpr
