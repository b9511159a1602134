#include "kvpr/planner/throughput_planner.h"

#include <algorithm>
#include <cmath>

#include "kvpr/common/error.h"
#include "kvpr/planner/cost_model.h"

namespace kvpr::planner {
namespace {

std::uint64_t aligned(std::uint64_t bytes) {
  return (bytes + 63) / 64 * 64;
}

// The replay is per layer: predict two and three layers and extend the steady state to all.
StepPrediction predict_layers(const HardwareProfile& profile, StepShape shape) {
  const std::int64_t n = shape.n_layers;
  if (n <= 3) return predict_step(profile, shape);
  shape.n_layers = 2;
  const StepPrediction two = predict_step(profile, shape);
  shape.n_layers = 3;
  const StepPrediction three = predict_step(profile, shape);
  const auto extend = [&](double a, double b) { return b + static_cast<double>(n - 3) * (b - a); };
  StepPrediction out;
  out.total_s = extend(two.total_s, three.total_s);
  out.transfer_s = extend(two.transfer_s, three.transfer_s);
  out.weights_s = extend(two.weights_s, three.weights_s);
  out.recompute_s = extend(two.recompute_s, three.recompute_s);
  out.attention_s = extend(two.attention_s, three.attention_s);
  out.other_s = extend(two.other_s, three.other_s);
  out.idle_s = extend(two.idle_s, three.idle_s);
  out.host_attention_s = extend(two.host_attention_s, three.host_attention_s);
  return out;
}

// The best share of each context to attend on the host at the option's split: a grid of
// eighths, then its neighbourhood in sixty-fourths.
ThroughputOption with_host_share(const HardwareProfile& profile, const ThroughputRequest& request,
                                 const ThroughputOption& option) {
  const auto sequences = static_cast<double>(option.micro_batch * option.micro_batches);
  ThroughputOption best = option;
  const auto consider = [&](double share) {
    if (share <= 0 || share > 1) return;
    ThroughputOption c = option;
    c.host_ratio = share;
    c.predicted = predict_throughput_step(profile, request, c);
    c.tokens_per_s = sequences / c.predicted.total_s;
    if (c.tokens_per_s > best.tokens_per_s) best = c;
  };
  for (int k = 1; k <= 8; ++k) consider(k / 8.0);
  const double center = best.host_ratio;
  if (center > 0) {
    for (int k = -3; k <= 3; ++k) consider(center + k / 64.0);
  }
  return best;
}

}  // namespace

std::vector<double> WeightLayout::fractions() const {
  std::uint64_t total = 0;
  for (const auto& m : matrices) total += m.host;
  std::vector<double> out = {0.0};
  std::uint64_t cum = 0;
  for (const auto& m : matrices) {
    cum += m.host;
    out.push_back(total == 0 ? 1.0 : static_cast<double>(cum) / static_cast<double>(total));
  }
  return out;
}

std::vector<bool> WeightLayout::resident(double fraction) const {
  std::uint64_t total = 0;
  for (const auto& m : matrices) total += m.host;
  std::vector<bool> out;
  std::uint64_t before = 0;
  for (const auto& m : matrices) {
    const double middle = static_cast<double>(before) + static_cast<double>(m.host) / 2;
    out.push_back(middle <= fraction * static_cast<double>(total));
    before += m.host;
  }
  return out;
}

std::uint64_t WeightLayout::resident_bytes(double fraction, std::int64_t n_layers) const {
  const auto kept = resident(fraction);
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    if (kept[i]) bytes += matrices[i].device;
  }
  return bytes * static_cast<std::uint64_t>(n_layers);
}

std::uint64_t WeightLayout::slot_bytes(double fraction) const {
  const auto kept = resident(fraction);
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    if (!kept[i]) bytes += aligned(matrices[i].device);
  }
  return bytes;
}

std::uint64_t WeightLayout::streamed_host_bytes(double fraction) const {
  const auto kept = resident(fraction);
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    if (!kept[i]) bytes += matrices[i].host;
  }
  return bytes;
}

std::uint64_t WeightLayout::device_bytes(double fraction, std::int64_t n_layers) const {
  return fixed_device_bytes + resident_bytes(fraction, n_layers) + 2 * slot_bytes(fraction);
}

StepPrediction predict_throughput_step(const HardwareProfile& profile,
                                       const ThroughputRequest& request,
                                       const ThroughputOption& option) {
  StepShape shape = request.model;
  const std::int64_t b = option.micro_batch * option.micro_batches;
  shape.s.assign(static_cast<std::size_t>(b), request.context);
  const auto l = std::llround(option.ratio * static_cast<double>(request.context));
  shape.l.assign(static_cast<std::size_t>(b), request.policy == Policy::transfer ? 0 : l);
  if (option.host_ratio > 0) shape.m = host_splits_for_ratio(shape.s, shape.l, option.host_ratio);
  shape.chunk = option.chunk;
  shape.micro.assign(static_cast<std::size_t>(option.micro_batches), option.micro_batch);
  shape.weight_bytes =
      static_cast<double>(request.weights.streamed_host_bytes(option.weight_fraction));
  return predict_layers(profile, shape);
}

ThroughputPlan plan_throughput(const HardwareProfile& profile, const ThroughputRequest& request) {
  if (request.sequences < 1) fail("throughput plan: ", request.sequences, " sequences");
  if (request.context < 1) fail("throughput plan: context of ", request.context, " tokens");
  if (request.weight_fraction > 1)
    fail("throughput plan: weight fraction ", request.weight_fraction, " above 1");
  const auto sizes = [](std::int64_t fixed, std::int64_t most) {
    std::vector<std::int64_t> out;
    if (fixed > 0) return std::vector<std::int64_t>{fixed};
    for (std::int64_t v = 1; v <= most; v *= 2) out.push_back(v);
    return out;
  };
  std::vector<double> fractions = request.weights.fractions();
  if (request.weight_fraction >= 0) fractions = {request.weight_fraction};
  const std::vector<double> ratios = request.policy == Policy::transfer
                                         ? std::vector<double>{0.0}
                                         : std::vector<double>{0, 0.2, 0.4, 0.6, 0.8, 1.0};
  // The host's share is searched only where the profile measured host attention (and never for
  // the FlexGen-style baseline, which moves every K,V over the link).
  const bool host = request.policy != Policy::transfer && profile.host_attn_bytes_per_s > 0 &&
                    profile.host_threads > 0;
  ThroughputPlan plan;
  bool any = false;
  for (const std::int64_t b : sizes(request.micro_batch, request.sequences)) {
    for (const std::int64_t g : sizes(request.micro_batches, request.sequences / b)) {
      if (b * g > request.sequences) continue;  // a fixed choice larger than the job
      ThroughputOption best_here;
      bool found = false;
      for (const double f : fractions) {
        ThroughputOption o;
        o.micro_batch = b;
        o.micro_batches = g;
        o.weight_fraction = f;
        o.device_bytes = request.weights.device_bytes(f, request.model.n_layers) +
                         (request.working_set ? request.working_set(b * g, g) : 0);
        o.fits = request.device_memory == 0 || o.device_bytes <= request.device_memory;
        if (!o.fits) continue;
        // The split: a coarse grid, then its neighbourhood.
        const auto score = [&](double ratio) {
          ThroughputOption c = o;
          c.ratio = ratio;
          c.predicted = predict_throughput_step(profile, request, c);
          c.tokens_per_s = static_cast<double>(b * g) / c.predicted.total_s;
          return c;
        };
        ThroughputOption top = score(ratios.front());
        for (const double r : ratios) {
          const auto c = score(r);
          if (c.tokens_per_s > top.tokens_per_s) top = c;
        }
        if (ratios.size() > 1) {
          for (const double r : {top.ratio - 0.1, top.ratio + 0.1}) {
            if (r < 0 || r > 1) continue;
            const auto c = score(r);
            if (c.tokens_per_s > top.tokens_per_s) top = c;
          }
        }
        if (!found || top.tokens_per_s > best_here.tokens_per_s) best_here = top;
        found = true;
      }
      if (!found) continue;
      // The host's share at this (b, G)'s best placement and split (searching it at every
      // placement would multiply the replays by the placements for little: the host share
      // relieves the link of K,V, not of weights).
      if (host) best_here = with_host_share(profile, request, best_here);
      plan.options.push_back(best_here);
      if (!any || best_here.tokens_per_s > plan.best.tokens_per_s) plan.best = best_here;
      any = true;
    }
  }
  if (!any) {
    fail("throughput plan: nothing fits a device budget of ", request.device_memory,
         " bytes (the smallest candidate needs more: lower the batch or raise --device-memory)");
  }
  const auto& o = plan.best;
  plan.reason = str(
      "micro-batch ", o.micro_batch, " x ", o.micro_batches, " micro-batches, ", o.weight_fraction,
      " of each layer's weights on the device, split ratio ", o.ratio,
      o.host_ratio > 0
          ? str(", the oldest ", std::round(o.host_ratio * 1000) / 10,
                "% of each context attended on the host (", profile.host_threads, " threads)")
          : std::string(),
      ": ", o.tokens_per_s, " tokens/s predicted (step ", o.predicted.total_s, " s, link ",
      o.predicted.transfer_s, " s of which weights ", o.predicted.weights_s, " s, recompute ",
      o.predicted.recompute_s, " s), the best of ", plan.options.size(), " (b, G) within ",
      request.device_memory == 0 ? std::string("no budget") : str(request.device_memory, " bytes"));
  return plan;
}

}  // namespace kvpr::planner
