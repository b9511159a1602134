#include "planning.h"

#include <cstdio>

#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/planner/decode_schedule.h"
#include "kvpr/worker/profiler.h"

namespace kvpr::cli {

planner::StepShape step_shape(const ModelConfig& c) {
  return worker::step_shape(c, kvstore::kBlockTokens);
}

HardwareProfile measured_profile(const BackendFlags& flags, const ModelConfig& config,
                                 bool remeasure) {
  const auto opts = backend_options(flags);
  auto backend = kernels::make_backend(opts);
  worker::ProfileOptions po;
  po.on_progress = [](const std::string& what) {
    std::fprintf(stderr, "profiling: %s...\n", what.c_str());
  };
  return worker::cached_profile(*backend, opts, config, remeasure, po);
}

void print_profile(const HardwareProfile& p) {
  std::printf("%s\nfingerprint: %s\nmeasured %s for h %lld, h_kv %lld, ffn %lld\n\n",
              p.description.c_str(), p.fingerprint.c_str(), p.created.c_str(),
              static_cast<long long>(p.h), static_cast<long long>(p.h_kv),
              static_cast<long long>(p.ffn));
  std::printf("%12s %14s %14s\n", "copy bytes", "host->dev GB/s", "dev->host GB/s");
  for (std::size_t i = 0; i < p.h2d_bytes_per_s.x.size(); ++i) {
    std::printf("%12.0f %14.3f %14.3f\n", p.h2d_bytes_per_s.x[i], p.h2d_bytes_per_s.y[i] / 1e9,
                p.d2h_bytes_per_s.y[i] / 1e9);
  }
  std::printf("\n%12s %14s\n", "rows m", "recompute GFLOP/s");
  for (std::size_t i = 0; i < p.recompute_flops_per_s.x.size(); ++i) {
    std::printf("%12.0f %14.2f\n", p.recompute_flops_per_s.x[i],
                p.recompute_flops_per_s.y[i] / 1e9);
  }
  std::printf("\nattention: %.3f us per context token + %.3f us per query (one layer)\n",
              p.attention_s_per_token * 1e6, p.attention_s_per_query * 1e6);
  std::printf("rest of a layer: %.3f ms + %.3f ms per batch row\n", p.other_s_per_layer * 1e3,
              p.other_s_per_row * 1e3);
  std::printf("LM head (vocab %lld): %.3f ms + %.3f ms per batch row\n",
              static_cast<long long>(p.vocab), p.head_s * 1e3, p.head_s_per_row * 1e3);
}

nlohmann::json phases_json(const planner::StepPrediction& p) {
  return {{"total_s", p.total_s},
          {"transfer_s", p.transfer_s},
          {"recompute_s", p.recompute_s},
          {"attention_s", p.attention_s},
          {"other_s", p.other_s},
          {"idle_s", p.idle_s},
          {"host_attention_s", p.host_attention_s}};
}

nlohmann::json decision_json(const planner::Decision& d, const ModelConfig& c) {
  nlohmann::json curve = nlohmann::json::array();
  for (const auto& point : d.curve) {
    curve.push_back(
        {{"ratio", point.ratio}, {"l", point.l}, {"predicted_s", point.predicted.total_s}});
  }
  const auto& plan = d.plan;
  return {{"policy", std::string(planner::to_string(plan.policy))},
          {"split", plan.l.empty() ? 0 : plan.l.front()},
          {"splits", plan.l},
          {"host_split", plan.m.empty() ? d.s : plan.m},
          {"host_ratio", plan.host_ratio},
          {"ratio", plan.ratio},
          {"chunk", plan.chunk},
          {"schedule", plan.paper_schedule ? "paper" : "pipelined"},
          {"predicted_s", plan.predicted_step_s},
          {"predicted_phases", phases_json(d.predicted)},
          {"transfer_predicted_s", d.transfer.total_s},
          {"recompute_predicted_s", d.recompute.total_s},
          {"lower_bound_kv_s", d.lower_bound_s},
          {"reason", plan.reason},
          {"curve", curve},
          {"model",
           {{"arch", std::string(to_string(c.arch))},
            {"layers", c.n_layers},
            {"h", c.h},
            {"h_kv", c.h_kv()}}}};
}

nlohmann::json throughput_json(const planner::ProfilePlanner& planner, const ModelConfig& c,
                               std::int64_t total, std::int64_t context,
                               std::uint64_t device_memory) {
  // Device memory of one device batch of bs sequences: two staging slots of activations and K,V
  // (fp32 on the device) plus the work buffers; the weights are resident and counted once.
  const double weights = [&] {
    auto n = static_cast<double>(c.vocab * c.word_embed_proj_dim);
    n += static_cast<double>(c.n_layers) *
         (static_cast<double>(c.h * (c.h + 2 * c.h_kv()) + c.h * c.h) +
          (c.arch == Arch::llama ? 3.0 : 2.0) * static_cast<double>(c.h * c.ffn));
    return n * 4;
  }();
  nlohmann::json options = nlohmann::json::array();
  nlohmann::json best;
  double best_rate = 0;
  for (std::int64_t bs = 1; bs <= total; bs *= 2) {
    const double per_seq =
        2.0 * static_cast<double>(context) * static_cast<double>(c.h + 4 * c.h_kv()) * 4.0 +
        static_cast<double>(c.n_layers) * static_cast<double>(c.h + 2 * c.h_kv()) * 4.0 +
        static_cast<double>(c.vocab + c.ffn) * 4.0;
    const double memory = weights + static_cast<double>(bs) * per_seq;
    const std::vector<std::int64_t> s(static_cast<std::size_t>(bs), context);
    const auto d = planner.decide(s);
    const std::int64_t batches = (total + bs - 1) / bs;
    const double rate = static_cast<double>(bs) / d.plan.predicted_step_s;
    const bool fits = memory <= static_cast<double>(device_memory);
    nlohmann::json o{{"device_batch", bs},
                     {"batches", batches},
                     {"device_memory_bytes", memory},
                     {"fits", fits},
                     {"tokens_per_s", rate},
                     {"predicted_step_s", d.plan.predicted_step_s},
                     {"ratio", d.plan.ratio},
                     {"chunk", d.plan.chunk}};
    options.push_back(o);
    if (fits && rate > best_rate) {
      best_rate = rate;
      best = decision_json(d, c);
      best["device_batch"] = bs;
      best["batches"] = batches;
      best["tokens_per_s"] = rate;
    }
  }
  if (best.is_null())
    fail("no device batch of ", context, "-token sequences fits in ", device_memory, " bytes");
  best["reason"] =
      str("device batch ", best["device_batch"].get<std::int64_t>(), " x ",
          best["batches"].get<std::int64_t>(), " batches maximises predicted tokens/s (", best_rate,
          ") within ", static_cast<double>(device_memory) / (1ull << 30),
          " GiB; per batch: ", best["reason"].get<std::string>());
  best["throughput_options"] = options;
  return best;
}

void print_plan(const nlohmann::json& plan) {
  std::printf("policy %s, split l = %s (ratio %.3f), chunk %s, %s schedule\n",
              plan["policy"].get<std::string>().c_str(), plan["splits"].dump().c_str(),
              plan["ratio"].get<double>(),
              plan["chunk"].get<std::int64_t>() >= planner::kPaperChunk
                  ? "all"
                  : plan["chunk"].dump().c_str(),
              plan["schedule"].get<std::string>().c_str());
  const auto& ph = plan["predicted_phases"];
  std::printf(
      "predicted step %.3f ms: link busy %.3f, recompute %.3f, attention %.3f, other %.3f, idle "
      "%.3f\n",
      1e3 * ph["total_s"].get<double>(), 1e3 * ph["transfer_s"].get<double>(),
      1e3 * ph["recompute_s"].get<double>(), 1e3 * ph["attention_s"].get<double>(),
      1e3 * ph["other_s"].get<double>(), 1e3 * ph["idle_s"].get<double>());
  std::printf("transfer all: %.3f ms, recompute all: %.3f ms, KV lower bound LB: %.3f ms\n",
              1e3 * plan["transfer_predicted_s"].get<double>(),
              1e3 * plan["recompute_predicted_s"].get<double>(),
              1e3 * plan["lower_bound_kv_s"].get<double>());
  if (plan.contains("device_batch")) {
    std::printf("throughput: device batch %lld x %lld batches, %.1f tokens/s predicted\n",
                static_cast<long long>(plan["device_batch"].get<std::int64_t>()),
                static_cast<long long>(plan["batches"].get<std::int64_t>()),
                plan["tokens_per_s"].get<double>());
  }
  std::printf("T(l):");
  for (const auto& p : plan["curve"]) {
    std::printf(" %.2f:%.2fms", p["ratio"].get<double>(), 1e3 * p["predicted_s"].get<double>());
  }
  std::printf("\nreason: %s\n", plan["reason"].get<std::string>().c_str());
}

}  // namespace kvpr::cli
