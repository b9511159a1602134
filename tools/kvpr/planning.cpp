#include "planning.h"

#include <cmath>
#include <cstdio>

#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/planner/decode_schedule.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/profiler.h"

namespace kvpr::cli {

HardwareProfile measured_profile(const BackendFlags& flags, const ModelConfig& config,
                                 bool remeasure) {
  const auto opts = backend_options(flags, config.dtype);
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
                               std::uint64_t device_memory, planner::Policy policy) {
  planner::ThroughputRequest request;
  request.model = planner.model();
  request.weights = worker::weight_layout(c, DType::f32);
  request.sequences = total;
  request.context = context;
  request.device_memory = device_memory;
  request.policy = policy;
  request.working_set = [&](std::int64_t batch, std::int64_t micro) {
    return worker::working_set_bytes(c, batch, context, micro, DType::f32);
  };
  const auto plan = planner::plan_throughput(planner.profile(), request);
  // m of one sequence of the plan, by the rule the planner predicted it with.
  const auto host_split = [&](const planner::ThroughputOption& o) {
    const std::int64_t s = context;
    const std::int64_t l = policy == planner::Policy::transfer
                               ? 0
                               : planner::splits_for_ratio({&s, 1}, o.ratio).front();
    return planner::host_splits_for_ratio({&s, 1}, {&l, 1}, o.host_ratio).front();
  };
  const auto option_json = [&](const planner::ThroughputOption& o) {
    auto phases = phases_json(o.predicted);
    phases["weights_s"] = o.predicted.weights_s;
    return nlohmann::json{{"micro_batch", o.micro_batch},
                          {"micro_batches", o.micro_batches},
                          {"weight_fraction", o.weight_fraction},
                          {"ratio", o.ratio},
                          {"split", std::llround(o.ratio * static_cast<double>(context))},
                          {"host_ratio", o.host_ratio},
                          {"host_split", host_split(o)},
                          {"device_bytes", o.device_bytes},
                          {"predicted_step_s", o.predicted.total_s},
                          {"predicted_phases", phases},
                          {"tokens_per_s", o.tokens_per_s}};
  };
  nlohmann::json out = option_json(plan.best);
  out["policy"] = std::string(planner::to_string(policy));
  out["sequences"] = total;
  out["context"] = context;
  out["device_memory"] = device_memory;
  out["reason"] = plan.reason;
  nlohmann::json options = nlohmann::json::array();
  for (const auto& o : plan.options) options.push_back(option_json(o));
  out["throughput_options"] = options;
  const auto& b = plan.best;
  // The worker plans each step's split (and host share) from the measured profile, as here.
  out["command"] =
      str("kvpr batch --policy ", planner::to_string(policy), " --max-batch ",
          b.micro_batch * b.micro_batches, " --micro-batches ", b.micro_batches,
          " --weight-fraction ", b.weight_fraction, " --device-memory ", device_memory,
          policy == planner::Policy::kvpr ? " --planner measured" : "",
          b.host_ratio > 0 ? str(" --host-threads ", planner.profile().host_threads) : "");
  return out;
}

void print_throughput_plan(const nlohmann::json& plan) {
  std::printf(
      "throughput plan (%s): micro-batch %lld x %lld micro-batches, %.2f of each layer's "
      "weights on the device, split ratio %.2f (l = %lld), host share %.2f (m = %lld)\n",
      plan["policy"].get<std::string>().c_str(),
      static_cast<long long>(plan["micro_batch"].get<std::int64_t>()),
      static_cast<long long>(plan["micro_batches"].get<std::int64_t>()),
      plan["weight_fraction"].get<double>(), plan["ratio"].get<double>(),
      static_cast<long long>(plan["split"].get<std::int64_t>()), plan["host_ratio"].get<double>(),
      static_cast<long long>(plan["host_split"].get<std::int64_t>()));
  const auto& ph = plan["predicted_phases"];
  std::printf(
      "predicted step %.3f ms: link busy %.3f (weights %.3f), recompute %.3f, attention %.3f, "
      "host attention %.3f, other %.3f, idle %.3f; %.1f tokens/s; %.3f GiB of device memory\n",
      1e3 * ph["total_s"].get<double>(), 1e3 * ph["transfer_s"].get<double>(),
      1e3 * ph["weights_s"].get<double>(), 1e3 * ph["recompute_s"].get<double>(),
      1e3 * ph["attention_s"].get<double>(), 1e3 * ph["host_attention_s"].get<double>(),
      1e3 * ph["other_s"].get<double>(), 1e3 * ph["idle_s"].get<double>(),
      plan["tokens_per_s"].get<double>(),
      static_cast<double>(plan["device_bytes"].get<std::uint64_t>()) / (1ull << 30));
  std::printf("%12s %14s %10s %8s %8s %14s\n", "micro-batch", "micro-batches", "weights", "ratio",
              "host", "tokens/s");
  for (const auto& o : plan["throughput_options"]) {
    std::printf("%12lld %14lld %10.2f %8.2f %8.2f %14.1f\n",
                static_cast<long long>(o["micro_batch"].get<std::int64_t>()),
                static_cast<long long>(o["micro_batches"].get<std::int64_t>()),
                o["weight_fraction"].get<double>(), o["ratio"].get<double>(),
                o["host_ratio"].get<double>(), o["tokens_per_s"].get<double>());
  }
  std::printf("run it: %s\nreason: %s\n", plan["command"].get<std::string>().c_str(),
              plan["reason"].get<std::string>().c_str());
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
  std::printf("T(l):");
  for (const auto& p : plan["curve"]) {
    std::printf(" %.2f:%.2fms", p["ratio"].get<double>(), 1e3 * p["predicted_s"].get<double>());
  }
  std::printf("\nreason: %s\n", plan["reason"].get<std::string>().c_str());
}

}  // namespace kvpr::cli
