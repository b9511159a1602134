#include "kvpr/common/step_model.h"

#include <algorithm>
#include <array>

#include "kvpr/common/error.h"

namespace kvpr {
namespace {

struct Timelines {
  const HardwareProfile& profile;
  const StepShape& shape;
  StepPrediction out;
  double copy_free = 0;  // when the copy queue finishes what was enqueued so far
  double compute = 0;    // when the compute queue finishes what was enqueued so far

  double h2d(double bytes) {
    const double t = bytes / profile.h2d_bytes_per_s.at(bytes);
    out.transfer_s += t;
    return t;
  }
  double d2h(double bytes) {
    const double t = bytes / profile.d2h_bytes_per_s.at(bytes);
    out.transfer_s += t;
    return t;
  }
  void busy(double& phase, double t) {
    phase += t;
    compute += t;
  }
  void wait_for(double ready) {
    if (ready > compute) {
      out.idle_s += ready - compute;
      compute = ready;
    }
  }
};

// Copies of rows [t0, t1) of one part, one per store block they touch.
template <typename F>
void for_each_span(std::int64_t t0, std::int64_t t1, std::int64_t block, F&& f) {
  for (std::int64_t t = t0; t < t1;) {
    const std::int64_t n = std::min(block - t % block, t1 - t);
    f(n);
    t += n;
  }
}

struct Fetch {
  std::vector<std::pair<std::int64_t, double>> chunks;  // (rows landed, time)
  double kv_landed = 0;
};

}  // namespace

StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape) {
  if (shape.s.size() != shape.l.size())
    fail("step model: ", shape.s.size(), " lengths, ", shape.l.size(), " splits");
  Timelines tl{profile, shape, {}, 0, 0};
  const auto b = static_cast<double>(shape.s.size());
  const double h = static_cast<double>(shape.h);
  const double h_kv = static_cast<double>(shape.h_kv);
  const double p = static_cast<double>(shape.p);
  // Split "other" between before attention (q/k/v projections) and after it (o projection, FFN)
  // by their GEMM FLOPs.
  const double pre_flops = h * (h + 2 * h_kv);
  const double post_flops =
      h * h + (shape.gated_ffn ? 3.0 : 2.0) * h * static_cast<double>(shape.ffn);
  const double pre_share = pre_flops / (pre_flops + post_flops);
  const double other_layer = profile.other_s_per_layer + profile.other_s_per_row * b;
  double attention = profile.attention_s_per_query * b;
  for (auto s : shape.s) attention += profile.attention_s_per_token * static_cast<double>(s + 1);

  std::array<double, 2> slot_free{0, 0};
  std::vector<Fetch> fetches(static_cast<std::size_t>(shape.n_layers));
  const auto fetch = [&](std::int64_t layer) {
    Fetch& f = fetches[static_cast<std::size_t>(layer)];
    double t = std::max(tl.copy_free, slot_free[static_cast<std::size_t>(layer % 2)]);
    std::int64_t rows = 0, boundary = shape.chunk;
    for (std::size_t i = 0; i < shape.s.size(); ++i) {
      for_each_span(0, std::clamp<std::int64_t>(shape.l[i], 0, shape.s[i]), shape.block_tokens,
                    [&](std::int64_t n) {
                      t += tl.h2d(static_cast<double>(n) * h * p);
                      rows += n;
                      if (rows >= boundary) {
                        f.chunks.emplace_back(rows, t);
                        boundary = rows + shape.chunk;
                      }
                    });
    }
    if (rows > 0 && (f.chunks.empty() || f.chunks.back().first < rows))
      f.chunks.emplace_back(rows, t);
    for (std::size_t i = 0; i < shape.s.size(); ++i) {
      for (int part = 0; part < 2; ++part) {
        for_each_span(std::clamp<std::int64_t>(shape.l[i], 0, shape.s[i]), shape.s[i],
                      shape.block_tokens,
                      [&](std::int64_t n) { t += tl.h2d(static_cast<double>(n) * h_kv * p); });
      }
    }
    f.kv_landed = t;
    tl.copy_free = t;
  };

  if (!shape.resident) {
    for (std::int64_t layer = 0; layer < std::min<std::int64_t>(2, shape.n_layers); ++layer)
      fetch(layer);
  }
  for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
    tl.busy(tl.out.other_s, other_layer * pre_share);
    // Write-back of the new tokens' activation, K and V (three small copies per sequence).
    double t = std::max(tl.copy_free, tl.compute);
    for (std::size_t i = 0; i < shape.s.size(); ++i)
      t += tl.d2h(h * p) + tl.d2h(h_kv * p) + tl.d2h(h_kv * p);
    tl.copy_free = t;
    if (!shape.resident) {
      const Fetch& f = fetches[static_cast<std::size_t>(layer)];
      std::int64_t begin = 0;
      for (const auto& [rows_end, landed] : f.chunks) {
        tl.wait_for(landed);
        const double m = static_cast<double>(rows_end - begin);
        tl.busy(tl.out.recompute_s, 4.0 * m * h * h_kv / profile.recompute_flops_per_s.at(m));
        begin = rows_end;
      }
      tl.wait_for(f.kv_landed);
    }
    tl.busy(tl.out.attention_s, attention);
    if (!shape.resident) {
      slot_free[static_cast<std::size_t>(layer % 2)] = tl.compute;
      if (layer + 2 < shape.n_layers) fetch(layer + 2);
    }
    tl.busy(tl.out.other_s, other_layer * (1 - pre_share));
  }
  tl.busy(tl.out.other_s, profile.head_s + profile.head_s_per_row * b);
  tl.wait_for(tl.copy_free);  // the step ends when the write-backs have landed
  tl.out.total_s = tl.compute;
  return tl.out;
}

}  // namespace kvpr
