// kvpr-bench-throughput: throughput mode (issue 12) against the FlexGen-style baseline on the CPU
// backend with an emulated link. Weights, K,V and activations live in host memory; the device
// budget holds a share of the weights chosen by the planner. Three configurations per setting,
// measured side by side: kvpr's throughput plan (micro-batch b, micro-batches G, weight share,
// split l), FlexGen's (the same block schedule under `transfer` at its own best plan) and the
// paper's published setting (b = 32, G = 1, kvpr's split), each with the planner's predicted step
// beside the measured one.
//
// Scale: at the full OPT-13B width one layer's weights take minutes to cross a link emulated at a
// GPU's compute/bandwidth ratio on one CPU core. --scale k divides the width (h, heads, FFN) and
// the batch by k and multiplies the emulated link by k: every term of the step (weight loads
// 12h²p/B, dense compute 24h²N/F, K,V transfer 4hpNs/B, recompute 4h²Nl/F) then shrinks by k³
// alike, so their ratios — what the comparison is about — are those of the full shape (attention,
// a small term, shrinks by k² only). Contexts are written into the store directly (random values;
// the timings do not depend on them).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/planner/throughput_planner.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/profiler.h"

namespace kvpr {
namespace {

// Every step: split l for every sequence (the throughput plan's).
class FixedSplit final : public planner::Planner {
 public:
  explicit FixedSplit(std::int64_t l) : l_(l) {}
  planner::Plan plan(const planner::PlanRequest& request) override {
    planner::Plan p;
    p.policy = planner::Policy::kvpr;
    p.l.assign(request.s.size(), l_);
    p.chunk = planner::kChunkTokens;
    return p;
  }

 private:
  std::int64_t l_;
};

struct Setting {
  std::string name;
  double device_flops_per_link_byte;  // the GPU's dense fp16 FLOP/s over its link's bytes/s
};

int run(int argc, char** argv) {
  CLI::App app("throughput mode vs FlexGen-style offloading (issue 12)");
  std::vector<std::string> shapes = {"opt-6.7b", "opt-13b"};
  std::string out = "throughput.json";
  std::int64_t scale = 8;
  std::int64_t layers = 2;
  std::int64_t prompt = 256;
  std::int64_t generated = 32;
  std::int64_t sequences = 512;  // of the job at full scale (÷ scale here)
  double weight_share = 0;       // of each layer's weights on the device (0: all in host memory)
  int steps = 2;
  int rounds = 2;
  app.add_option("--shapes", shapes, "opt-6.7b and/or opt-13b");
  app.add_option("--out", out, "JSON results");
  app.add_option("--scale", scale, "Divide width and batch by this, multiply the link by it");
  app.add_option("--layers", layers, "Cut depth");
  app.add_option("--prompt", prompt);
  app.add_option("--generated", generated);
  app.add_option("--sequences", sequences, "Sequences of the job at full scale");
  app.add_option("--weight-share", weight_share,
                 "Share of each layer's weights kept on the device (the budget holds that, two "
                 "slots for the rest, the embeddings and the buffers)");
  app.add_option("--steps", steps, "Measured decode steps per configuration and round");
  app.add_option("--rounds", rounds, "Rounds over the configurations, interleaved");
  CLI11_PARSE(app, argc, argv);
  if (scale < 1 || layers < 2) fail("--scale must be >= 1 and --layers >= 2");

  // A100 (312 TFLOP/s fp16) on PCIe 4 (25 GB/s); H200 (989 TFLOP/s) on PCIe 5 (50 GB/s).
  const std::vector<Setting> settings = {{"a100-pcie4", 312e12 / 25e9},
                                         {"h200-pcie5", 989e12 / 50e9}};
  const std::int64_t context = prompt + generated / 2;  // the mean context of the decode
  nlohmann::json results = nlohmann::json::array();
  for (const std::string& shape : shapes) {
    if (shape != "opt-6.7b" && shape != "opt-13b") fail("--shapes: unknown '", shape, "'");
    ModelConfig c = modelgen::preset("opt-6.7b");
    const std::int64_t full_h = shape == "opt-13b" ? 5120 : 4096;
    c.h = full_h / scale;
    c.head_dim = 128;
    c.n_heads = std::max<std::int64_t>(c.h / c.head_dim, 1);
    c.head_dim = c.h / c.n_heads;
    c.n_kv_heads = c.n_heads;
    c.ffn = 4 * c.h;
    c.word_embed_proj_dim = c.h;
    c.n_layers = layers;
    c.vocab = 512;
    c.dtype = DType::f16;
    const std::string dir = "/tmp/kvpr-throughput-" + shape + "-s" + std::to_string(scale);
    if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
      modelgen::GenOptions g;
      g.config = c;
      g.out = dir;
      g.seed = 1;
      g.write_tokenizer = false;
      modelgen::generate_model(g);
    }
    Checkpoint checkpoint(dir);
    const double F = [&] {
      auto probe = kernels::make_backend({"cpu", 0, 0, 1, DType::f32});
      worker::ProfileOptions po;
      po.seconds_per_point = 0.05;
      po.max_copy_bytes = 1 << 20;
      po.max_rows = 512;
      return worker::measure_profile(*probe, c, "bench", po).recompute_flops_per_s.at(512);
    }();
    for (const Setting& setting : settings) {
      const double B = F * static_cast<double>(scale) / setting.device_flops_per_link_byte;
      std::fprintf(stderr, "%s %s: F %.1f GFLOP/s, link emulated at %.2f MB/s\n", shape.c_str(),
                   setting.name.c_str(), F / 1e9, B / 1e6);
      const auto layout = worker::weight_layout(c, DType::f32);
      const std::int64_t n_seq = std::max<std::int64_t>(sequences / scale, 1);
      const auto working = [&](std::int64_t batch, std::int64_t g) {
        return worker::working_set_bytes(c, batch, context, g, DType::f32);
      };
      // The share is fixed (a cut-depth model would otherwise fit whole where the full one does
      // not); the budget holds it, the embeddings and the largest batch's buffers.
      const std::uint64_t budget = layout.fixed_device_bytes +
                                   layout.resident_bytes(weight_share, c.n_layers) +
                                   2 * layout.slot_bytes(weight_share) + working(n_seq, 1);
      kernels::BackendOptions bo{"cpu", B / 1e9, 0, 1, DType::f32};
      auto backend = kernels::make_backend(bo);
      worker::ProfileOptions po;
      po.seconds_per_point = 0.03;
      po.max_copy_bytes = 16ull << 20;
      po.max_rows = 1024;
      const HardwareProfile profile = worker::measure_profile(*backend, c, "bench", po);
      planner::ThroughputRequest request;
      request.model = worker::step_shape(c, 16);
      request.weights = layout;
      request.sequences = n_seq;
      request.context = context;
      request.device_memory = budget;
      request.working_set = working;
      request.weight_fraction = weight_share;
      const auto kvpr_plan = planner::plan_throughput(profile, request);
      request.policy = planner::Policy::transfer;
      const auto flexgen_plan = planner::plan_throughput(profile, request);
      request.policy = planner::Policy::kvpr;
      request.micro_batch = std::max<std::int64_t>(32 / scale, 1);
      request.micro_batches = 1;
      const auto paper_plan = planner::plan_throughput(profile, request);

      struct Config {
        std::string name;
        planner::ThroughputOption option;
        planner::Policy policy;
        std::vector<double> step_s;
        worker::PhaseTimes phases;
      };
      std::vector<Config> configs = {
          {"kvpr", kvpr_plan.best, planner::Policy::kvpr, {}, {}},
          {"flexgen", flexgen_plan.best, planner::Policy::transfer, {}, {}},
          {"paper_b32_g1", paper_plan.best, planner::Policy::kvpr, {}, {}}};
      for (int round = 0; round < rounds; ++round) {
        for (Config& cfg : configs) {
          const auto& o = cfg.option;
          auto be = kernels::make_backend(
              kernels::BackendOptions{"cpu", B / 1e9, 0, 1, DType::f32, budget});
          worker::DeviceModel model(checkpoint, *be, false,
                                    worker::WeightPlacement{o.weight_fraction, 0});
          const std::int64_t b = o.micro_batch * o.micro_batches;
          const std::uint64_t bytes = static_cast<std::uint64_t>(b) * (context + 32) * c.n_layers *
                                      (c.h + 2 * c.h_kv()) * size_of(c.dtype);
          kvstore::LocalKvStore store({c.n_layers, c.h, c.h_kv(), c.dtype, 16},
                                      bytes + (64ull << 20));
          std::vector<kvstore::SeqId> seqs;
          std::mt19937 rng(7);
          for (std::int64_t i = 0; i < b; ++i) {
            const auto seq = store.open();
            store.reserve(seq, context);
            for (std::int64_t layer = 0; layer < c.n_layers; ++layer) {
              for (Part part : {Part::act, Part::k, Part::v}) {
                for (const auto& span : store.locate(seq, layer, part, 0, context)) {
                  auto* p = reinterpret_cast<std::uint16_t*>(span.data);
                  const auto n = static_cast<std::size_t>(span.n_tokens) *
                                 static_cast<std::size_t>(part == Part::act ? c.h : c.h_kv());
                  for (std::size_t j = 0; j < n; ++j)
                    p[j] = f32_to_f16(static_cast<float>(rng() % 2001) / 1000.0f - 1);
                }
              }
            }
            store.commit(seq, context);
            seqs.push_back(seq);
          }
          const std::int64_t l = cfg.policy == planner::Policy::transfer
                                     ? 0
                                     : std::llround(o.ratio * static_cast<double>(context));
          FixedSplit planner(l);
          worker::EngineOptions eo{planner::Policy::kvpr, l};
          eo.micro_batches = o.micro_batches;
          worker::Engine engine(model, *be, store, planner, eo);
          const std::vector<std::int32_t> tokens(seqs.size(), 5);
          for (int i = 0; i <= steps; ++i) {  // the first is a warm-up
            engine.decode(seqs, tokens);
            for (auto seq : seqs) store.truncate(seq, context);
            if (i == 0) continue;
            cfg.step_s.push_back(engine.last_step().times.total);
            cfg.phases += engine.last_step().times;
          }
          std::fprintf(stderr,
                       "  %-13s b %lld x G %lld, weights %.2f, l %lld: step %.3f s (predicted "
                       "%.3f s)\n",
                       cfg.name.c_str(), static_cast<long long>(o.micro_batch),
                       static_cast<long long>(o.micro_batches), o.weight_fraction,
                       static_cast<long long>(l), cfg.step_s.back(), o.predicted.total_s);
        }
      }
      nlohmann::json row{{"shape", shape},
                         {"setting", setting.name},
                         {"device_flops_per_link_byte", setting.device_flops_per_link_byte},
                         {"flops_per_s", F},
                         {"link_bytes_per_s", B},
                         {"device_memory", budget},
                         {"sequences", n_seq},
                         {"context", context}};
      const auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      for (const Config& cfg : configs) {
        const auto& o = cfg.option;
        const double measured = median(cfg.step_s);
        const auto n = static_cast<double>(cfg.step_s.size());
        row[cfg.name] = {
            {"micro_batch", o.micro_batch},
            {"micro_batches", o.micro_batches},
            {"weight_fraction", o.weight_fraction},
            {"ratio", cfg.policy == planner::Policy::transfer ? 0.0 : o.ratio},
            {"step_s", cfg.step_s},
            {"median_step_s", measured},
            {"tokens_per_s", static_cast<double>(o.micro_batch * o.micro_batches) / measured},
            {"predicted_step_s", o.predicted.total_s},
            {"prediction_error", o.predicted.total_s / measured - 1},
            {"transfer_busy_s", cfg.phases.transfer / n},
            {"recompute_s", cfg.phases.recompute / n},
            {"idle_s", cfg.phases.idle / n}};
      }
      row["kvpr_over_flexgen"] =
          row["kvpr"]["tokens_per_s"].get<double>() / row["flexgen"]["tokens_per_s"].get<double>();
      row["kvpr_over_paper_setting"] = row["kvpr"]["tokens_per_s"].get<double>() /
                                       row["paper_b32_g1"]["tokens_per_s"].get<double>();
      std::fprintf(stderr, "  kvpr / flexgen %.3f, kvpr / paper setting %.3f\n",
                   row["kvpr_over_flexgen"].get<double>(),
                   row["kvpr_over_paper_setting"].get<double>());
      results.push_back(row);
    }
  }
  nlohmann::json doc{{"scale", scale},
                     {"layers", layers},
                     {"prompt", prompt},
                     {"generated", generated},
                     {"weight_share", weight_share},
                     {"results", results}};
  std::ofstream(out) << doc.dump(1) << "\n";
  return 0;
}

}  // namespace
}  // namespace kvpr

int main(int argc, char** argv) {
  try {
    return kvpr::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvpr-bench-throughput: %s\n", e.what());
    return 1;
  }
}
