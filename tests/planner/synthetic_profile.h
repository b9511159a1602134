// A synthetic hardware profile (a link of 16 GB/s, 300 TFLOP/s of recompute) and an
// OPT-6.7B-wide model shape, for planner tests that need no service (planner_test_support.h
// adds the service's pieces).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "kvpr/common/profile.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::planner::testing {

inline Curve flat(double y) {
  return {{1, 1e12}, {y, y}};
}

inline HardwareProfile synthetic_profile(std::string fingerprint = "synthetic-h4096",
                                         std::int64_t h = 4096, std::int64_t h_kv = 4096) {
  HardwareProfile p;
  p.fingerprint = std::move(fingerprint);
  p.backend = "synthetic";
  p.description = "a link of 16 GB/s and 300 TFLOP/s of recompute";
  p.h = h;
  p.h_kv = h_kv;
  p.n_heads = 32;
  p.head_dim = h / 32;
  p.ffn = 4 * h;
  p.h2d_bytes_per_s = {{4096, 1 << 20, 1 << 26}, {4e9, 12e9, 16e9}};
  p.d2h_bytes_per_s = flat(16e9);
  p.recompute_flops_per_s = {{16, 256, 4096}, {50e12, 200e12, 300e12}};
  p.attention_s_per_token = 1e-8;
  p.attention_s_per_query = 1e-6;
  p.other_s_per_layer = 1e-4;
  p.other_s_per_row = 1e-5;
  p.vocab = 32000;
  p.head_s = 1e-3;
  p.head_s_per_row = 1e-5;
  return p;
}

inline StepShape model_shape(std::int64_t h = 4096, std::int64_t h_kv = 4096) {
  StepShape m;
  m.n_layers = 4;
  m.h = h;
  m.h_kv = h_kv;
  m.ffn = 4 * h;
  m.p = 2;
  m.block_tokens = 16;
  return m;
}

}  // namespace kvpr::planner::testing
