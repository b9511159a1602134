// `kvpr bench`'s measuring side: the fixed-plan planner, a measured point, the bench's state
// (model, store, prompts, scheduler) and the runs that measure every point; and the bench's check
// of its own profile against the measured points (bench_drift.cpp). bench_command.cpp reports.
#pragma once

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/common/profile.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/planner/drift_monitor.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/engine.h"
#include "kvpr/worker/profiler.h"
#include "kvpr/worker/trace.h"
#include "planning.h"

namespace kvpr::cli::bench {

// A planner that answers every step with one fixed plan (for sweeping l and the chunk size).
class FixedPlanner final : public planner::Planner {
 public:
  FixedPlanner(double ratio, std::int64_t chunk) : ratio_(ratio), chunk_(chunk) {}
  planner::Plan plan(const planner::PlanRequest& request) override {
    planner::Plan p;
    p.policy = planner::Policy::kvpr;
    p.l = planner::splits_for_ratio(request.s, ratio_);
    p.chunk = chunk_;
    p.ratio = ratio_;
    return p;
  }

 private:
  double ratio_;
  std::int64_t chunk_;
};

struct Measured {
  std::string policy;
  std::string label;
  double ratio = 0;
  std::vector<std::int64_t> l;
  std::int64_t chunk = 0;
  double measured_s = 0;
  double predicted_s = 0;
  // max(link bytes / B, device work): the step if the two queues overlapped perfectly.
  double step_lower_bound_s = 0;
  worker::PhaseTimes phases;  // mean per step
};

// Everything one bench run holds: the model on its backend, the host store, the prompts, the
// scheduler and the sequences prefilled once for every non-resident measurement.
struct Bench {
  const BenchOptions& options;
  Checkpoint checkpoint;
  std::unique_ptr<kernels::Backend> backend;
  HardwareProfile profile;
  std::unique_ptr<planner::ProfilePlanner> planner;
  std::unique_ptr<worker::DeviceModel> model;
  std::unique_ptr<kvstore::LocalKvStore> store;
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<worker::SeqHandle> seqs;
  std::vector<std::int64_t> s;
  std::unique_ptr<worker::TraceWriter> trace;

  explicit Bench(const BenchOptions& o)
      : options(o),
        checkpoint(o.model),
        backend(kernels::make_backend(backend_options(o.backend, checkpoint.config().dtype))) {
    const ModelConfig& c = checkpoint.config();
    if (o.context + o.steps + 1 > c.max_positions) {
      fail("--context ", o.context, " does not fit max_position_embeddings ", c.max_positions);
    }
    if (!o.trace.empty()) trace = std::make_unique<worker::TraceWriter>(o.trace);
    profile =
        o.profile.empty() ? measured_profile(o.backend, c, o.remeasure) : load_profile(o.profile);
    const std::int64_t block_tokens = worker::store_block_tokens(o.backend.backend, c);
    planner =
        std::make_unique<planner::ProfilePlanner>(profile, worker::step_shape(c, block_tokens));
    model = std::make_unique<worker::DeviceModel>(checkpoint, *backend, !o.quiet);
    // The store holds the batch's contexts (each step's token is truncated away again), and its
    // memory is registered with the backend, as the embedded stack's and the worker's are: K,V
    // and activations then move straight from it to the device (pinned staging, on CUDA, is
    // 30x slower than the link).
    const kvstore::StoreShape shape{c.n_layers, c.h, c.h_kv(), c.dtype, block_tokens};
    const std::int64_t blocks_per_seq = (o.context + 2) / shape.block_tokens + 1;
    store = std::make_unique<kvstore::LocalKvStore>(
        shape,
        static_cast<std::uint64_t>(o.batch * blocks_per_seq * c.n_layers) * shape.block_bytes());
    if (store->arena() != nullptr) backend->register_host(store->arena(), store->arena_bytes());
    std::mt19937 rng(1);
    std::uniform_int_distribution<std::int32_t> id(3, static_cast<std::int32_t>(c.vocab - 1));
    for (std::int64_t i = 0; i < o.batch; ++i) {
      std::vector<std::int32_t> p(static_cast<std::size_t>(o.context));
      for (auto& t : p) t = id(rng);
      prompts.push_back(std::move(p));
    }
    s.assign(static_cast<std::size_t>(o.batch), o.context);
  }

  ~Bench() {
    if (store && store->arena() != nullptr) {
      backend->synchronize();
      backend->unregister_host(store->arena());
    }
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  void note(const std::string& what) const {
    if (!options.quiet) std::fprintf(stderr, "bench: %s\n", what.c_str());
  }

  // Lower-median step time over options.steps steps after one warm-up, the context reset each
  // time; `label` names the steps in the trace when one is written.
  Measured run(worker::Engine& engine, const std::vector<worker::SeqHandle>& batch,
               const char* label = nullptr) {
    std::vector<std::int32_t> tokens(batch.size(), 5);
    std::vector<double> totals;
    worker::PhaseTimes sum;
    double link_bytes = 0;
    for (std::int64_t step = 0; step <= options.steps; ++step) {
      engine.decode(batch, tokens);
      for (auto seq : batch) engine.truncate(seq, options.context);
      if (step == 0) continue;  // warm-up: buffers grow, pages are touched
      const auto& last = engine.last_step();
      totals.push_back(last.times.total);
      sum += last.times;
      link_bytes += static_cast<double>(last.h2d_bytes + last.d2h_bytes);
      if (trace && label != nullptr) trace->add_step(last, str(label, " step ", step));
    }
    std::sort(totals.begin(), totals.end());
    Measured m;
    // The lower median: on a shared 2-core machine a step is only ever slowed down by others.
    m.measured_s = totals[(totals.size() - 1) / 2];
    const auto n = static_cast<double>(options.steps);
    m.phases = {sum.transfer / n, sum.recompute / n, sum.attention / n,
                sum.other / n,    sum.idle / n,      sum.total / n};
    m.l = engine.last_step().plan.l;
    m.step_lower_bound_s = link_bytes / n / profile.h2d_bytes_per_s.y.back();
    return m;
  }

  // The prediction and the lower bound's device work for a measured point.
  void predict(Measured& m, bool resident) const {
    const auto p = planner->predict(s, m.l, std::max<std::int64_t>(m.chunk, 1), resident);
    m.predicted_s = p.total_s;
    m.step_lower_bound_s =
        std::max(m.step_lower_bound_s, p.recompute_s + p.attention_s + p.other_s);
  }

  Measured measure_resident() {
    note("resident");
    planner::CostModelPlanner fixed;
    worker::Engine engine(*model, *backend, *store, fixed, {planner::Policy::resident, {}, false});
    std::vector<worker::SeqHandle> batch;
    std::vector<float> logits;
    for (const auto& p : prompts) batch.push_back(engine.prefill(p, logits));
    auto m = run(engine, batch);
    m.policy = m.label = "resident";
    m.l.assign(s.size(), 0);
    predict(m, true);
    for (auto seq : batch) engine.release(seq);
    return m;
  }

  void prefill_shared() {
    FixedPlanner prefiller(0, planner::kChunkTokens);
    worker::Engine engine(*model, *backend, *store, prefiller, {planner::Policy::kvpr, {}, false});
    note(str("prefill ", options.batch, " x ", options.context, " tokens"));
    std::vector<float> logits;
    for (const auto& p : prompts) seqs.push_back(engine.prefill(p, logits));
  }

  Measured measure(const std::string& policy, const std::string& label, double ratio,
                   std::int64_t chunk, bool traced = false) {
    note(label);
    FixedPlanner fixed(ratio, chunk);
    worker::Engine engine(*model, *backend, *store, fixed,
                          {planner::Policy::kvpr, {}, traced && trace != nullptr});
    auto m = run(engine, seqs, traced ? label.c_str() : nullptr);
    m.policy = policy;
    m.label = label;
    m.ratio = ratio;
    m.chunk = chunk;
    predict(m, false);
    return m;
  }
};

// NOLINTNEXTLINE(bugprone-exception-escape): clang-tidy 14 misreads the implicit members
struct Results {
  std::vector<Measured> points;  // resident, transfer, recompute, chosen, chosen with paper chunk
  std::vector<Measured> sweep;
  const Measured* chosen = nullptr;
  const Measured* paper = nullptr;
  const Measured* best = nullptr;
  double chosen_vs_best = 0;
  double chosen_vs_best_sweep = 0;
  nlohmann::json confirmation = nullptr;
};

// Measures resident, transfer, recompute, the chosen split (pipelined and with the paper's single
// chunk) and, with --sweep, the splits across [0, s]; the chosen point against the best.
Results measure_all(Bench& bench, const planner::Decision& decision);

// The bench's own check of its profile: the measured points against their predictions. Past the
// margin the profile is refitted from them, cached (when it came from the cache), and the split
// decided again; a new choice is measured too.
struct Drift {
  double ratio = 1;  // measured / predicted over the points, before any refit
  std::optional<planner::Refit> refit;
  std::optional<planner::Decision> decision;  // made from the refitted profile
  std::optional<Measured> rechosen;           // measured when the refitted decision differs
  std::vector<double> predicted_after_s;      // each point (points, then sweep) under the refit
  std::string cached_to;
};

Drift check_drift(Bench& bench, const planner::Decision& decision, const Results& r);
nlohmann::json drift_json(const Drift& d, const Results& r, double margin);
void print_drift(const nlohmann::json& d);

}  // namespace kvpr::cli::bench
