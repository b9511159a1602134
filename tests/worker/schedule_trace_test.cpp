// The engine's recorded timeline against the step model's replay of the same DecodeSchedule: the
// same spans in the same order on each queue, the engine's spans obeying the orderings the model
// assumes (a chunk is recomputed after it landed, attention after the K,V landed, a slot refilled
// after its attention), and the Chrome trace of it valid JSON whose spans add up to the step's
// reported phases.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/planner/step_model.h"
#include "kvpr/worker/profiler.h"
#include "kvpr/worker/trace.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

using testing::Stack;
using Label = std::tuple<std::string, std::int32_t, std::int32_t>;  // op, layer, chunk

std::filesystem::path scratch_dir() {
  static const auto dir = [] {
    auto p = std::filesystem::temp_directory_path() /
             ("kvpr-schedule-trace-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    return p;
  }();
  return dir;
}

std::string four_layer_model() {
  static const std::string dir = [] {
    modelgen::GenOptions options;
    options.config = modelgen::preset("opt-tiny");
    options.config.n_layers = 4;  // deep enough for the fetch two layers ahead to reuse a slot
    options.out = scratch_dir() / "opt-4l";
    options.seed = 5;
    options.write_tokenizer = false;
    modelgen::generate_model(options);
    return options.out.string();
  }();
  return dir;
}

HardwareProfile any_profile(const ModelConfig& c) {
  HardwareProfile p;
  p.h = c.h;
  p.h_kv = c.h_kv();
  p.h2d_bytes_per_s = {{1, 1e12}, {1e9, 1e9}};
  p.d2h_bytes_per_s = {{1, 1e12}, {1e9, 1e9}};
  p.recompute_flops_per_s = {{1, 1e6}, {1e10, 1e10}};
  p.attention_s_per_token = 1e-8;
  p.other_s_per_layer = 1e-4;
  p.head_s = 1e-4;
  return p;
}

// One traced decode step of a batch (s = 40 and 23, l = 20 clamped) on a slow emulated link.
struct TracedStep {
  TracedStep(planner::Policy policy, std::optional<std::int64_t> split,
             std::optional<std::int64_t> host_split = std::nullopt)
      : stack(four_layer_model(), policy, split, 1ull << 28, {"cpu", 0.02, 0, 1, DType::f32}) {
    EngineOptions options{policy, split, true};
    options.host_split = host_split;
    engine = std::make_unique<Engine>(*stack.model, *stack.backend, *stack.store, stack.planner,
                                      options);
    std::vector<float> logits;
    for (std::int64_t n : {40, 23}) {
      std::vector<std::int32_t> prompt(static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int32_t>(3 + i);
      seqs.push_back(engine->prefill(prompt, logits));
    }
    const std::vector<std::int32_t> tokens = {7, 9};
    engine->decode(seqs, tokens);
  }

  Stack stack;
  std::unique_ptr<Engine> engine;
  std::vector<SeqHandle> seqs;
};

std::map<kernels::Queue, std::vector<Label>> engine_labels(const StepStats& step) {
  std::map<kernels::Queue, std::vector<Label>> out;
  for (const auto& s : step.trace) out[s.queue].emplace_back(s.op, s.layer, s.chunk);
  return out;
}

// The replay's spans named as the engine names its recorded ones: fetched blocks up to a chunk
// mark are one "fetch_act" span, the blocks up to kv_landed one "fetch_kv" span.
std::map<kernels::Queue, std::vector<Label>> model_labels(const HardwareProfile& profile,
                                                          const planner::StepShape& shape) {
  std::map<kernels::Queue, std::vector<Label>> out;
  bool fill_started = false;
  planner::predict_step(profile, shape, [&](const planner::PredictedSpan& s) {
    using planner::OpKind;
    if (s.host) return;  // the host's threads: not a backend queue
    const auto queue = s.copy_queue ? kernels::Queue::copy : kernels::Queue::compute;
    switch (s.kind) {
      case OpKind::fetch:
        fill_started = true;
        return;
      case OpKind::chunk_landed:
        out[queue].emplace_back("fetch_act", s.layer, s.chunk);
        return;
      case OpKind::kv_landed:
        if (fill_started) out[queue].emplace_back("fetch_kv", s.layer, -1);
        fill_started = false;
        return;
      case OpKind::recompute:
        out[queue].emplace_back("recompute", s.layer, s.chunk);
        return;
      default:
        out[queue].emplace_back(planner::to_string(s.kind), s.layer, -1);
        return;
    }
  });
  return out;
}

const TraceSpan& find(const StepStats& step, const std::string& op, std::int32_t layer,
                      std::int32_t chunk = -1) {
  for (const auto& s : step.trace) {
    if (op == s.op && s.layer == layer && s.chunk == chunk) return s;
  }
  throw std::runtime_error("no span " + op + " of layer " + std::to_string(layer));
}

TEST(ScheduleTrace, EngineTimelineAndStepModelAgreeInStructure) {
  struct Case {
    planner::Policy policy;
    std::optional<std::int64_t> split, host_split;
  };
  for (const auto& [policy, split, host_split] :
       std::vector<Case>{{planner::Policy::kvpr, 20, std::nullopt},
                         {planner::Policy::transfer, std::nullopt, std::nullopt},
                         {planner::Policy::recompute, std::nullopt, std::nullopt},
                         {planner::Policy::resident, std::nullopt, std::nullopt},
                         {planner::Policy::kvpr, 8, 30},    // three-way: [0, 8) [8, 30) [30, s)
                         {planner::Policy::kvpr, 0, 0}}) {  // everything on the host
    SCOPED_TRACE(std::string(planner::to_string(policy)) + " host split " +
                 std::to_string(host_split.value_or(-1)));
    TracedStep run(policy, split, host_split);
    const StepStats& step = run.engine->last_step();
    const ModelConfig& c = run.engine->config();
    planner::StepShape shape = step_shape(c, run.stack.store->shape().block_tokens);
    shape.s = {40, 23};
    shape.l = step.plan.l;
    shape.chunk = step.plan.chunk;
    shape.resident = policy == planner::Policy::resident;
    shape.m = step.plan.m;
    const auto recorded = engine_labels(step);
    const auto predicted = model_labels(any_profile(c), shape);
    EXPECT_EQ(recorded.at(kernels::Queue::compute), predicted.at(kernels::Queue::compute));
    EXPECT_EQ(recorded.at(kernels::Queue::copy), predicted.at(kernels::Queue::copy));

    // Each queue's spans follow one another; the engine orders them as the model assumes.
    std::map<kernels::Queue, double> last_begin;
    for (const auto& s : step.trace) {
      EXPECT_LE(s.begin_s, s.end_s + 1e-9) << s.op;
      EXPECT_GE(s.begin_s + 1e-9, last_begin[s.queue]) << s.op << " of layer " << s.layer;
      last_begin[s.queue] = s.begin_s;
    }
    if (policy == planner::Policy::resident) continue;
    for (std::int32_t layer = 0; layer < c.n_layers; ++layer) {
      const auto& attend = find(step, "attend", layer);
      if (host_split) {
        // The host's part: the query goes down after the projection, the partials come up after
        // the attention and merge after that, on the compute queue.
        EXPECT_GE(find(step, "download_query", layer).begin_s + 1e-9,
                  find(step, "project", layer).end_s);
        EXPECT_GE(find(step, "upload_partials", layer).begin_s + 1e-9, attend.end_s);
        EXPECT_GE(find(step, "merge", layer).begin_s + 1e-9,
                  find(step, "upload_partials", layer).end_s);
        EXPECT_GT(step.times.host_attention, 0.0);
        if (*host_split == 0) continue;  // nothing fetched, nothing recomputed
      }
      EXPECT_GE(attend.begin_s + 1e-9, find(step, "fetch_kv", layer).end_s);
      for (const auto& s : step.trace) {
        if (std::string(s.op) == "recompute" && s.layer == layer) {
          EXPECT_GE(s.begin_s + 1e-9, find(step, "fetch_act", layer, s.chunk).end_s);
        }
      }
      if (layer + 2 < c.n_layers) {
        // The fill of layer + 2 reuses this layer's slot: it starts after this attention.
        const auto& refill = policy == planner::Policy::transfer
                                 ? find(step, "fetch_kv", layer + 2)
                                 : find(step, "fetch_act", layer + 2, 0);
        EXPECT_GE(refill.begin_s + 1e-9, attend.end_s);
      }
    }
  }
}

double sum_of(const StepStats& step, std::initializer_list<std::string> ops) {
  double total = 0;
  for (const auto& s : step.trace) {
    for (const auto& op : ops) total += op == s.op ? s.end_s - s.begin_s : 0;
  }
  return total;
}

TEST(ScheduleTrace, ChromeTraceIsValidAndItsSpansAddUpToThePhases) {
  TracedStep run(planner::Policy::kvpr, 20);
  const StepStats& step = run.engine->last_step();
  const auto path = scratch_dir() / "trace.json";
  {
    TraceWriter writer(path);
    writer.add_step(step, "step 1");
    writer.add_step(step, "step 2");
  }
  std::ifstream f(path);
  const auto trace = nlohmann::json::parse(f);  // throws on invalid JSON
  std::map<int, int> per_track;
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") == "X") ++per_track[e.at("tid").get<int>()];
  }
  EXPECT_EQ(per_track[0], 2);  // the steps
  EXPECT_EQ(per_track[1],
            2 * static_cast<int>(engine_labels(step)[kernels::Queue::compute].size()));
  EXPECT_EQ(per_track[2], 2 * static_cast<int>(engine_labels(step)[kernels::Queue::copy].size()));

  // The copy queue's spans cover its busy time (they also hold the moments its thread waited for
  // a core between two copies, which a loaded machine makes longer, so the bound above is loose);
  // the recompute and attention spans are those phases.
  const auto& t = step.times;
  const double copy_spans = sum_of(step, {"fetch_act", "fetch_kv", "write_back"});
  EXPECT_GE(copy_spans, 0.75 * t.transfer - 2e-3);
  EXPECT_LE(copy_spans, 2.0 * t.transfer + 5e-3);
  EXPECT_NEAR(sum_of(step, {"recompute"}), t.recompute, 0.25 * t.recompute + 2e-3);
  EXPECT_NEAR(sum_of(step, {"attend"}), t.attention, 0.25 * t.attention + 2e-3);
  // On a slow link the copy queue works while compute does: the spans overlap.
  double overlap = 0;
  for (const auto& a : step.trace) {
    if (a.queue != kernels::Queue::copy) continue;
    for (const auto& b : step.trace) {
      if (b.queue != kernels::Queue::compute) continue;
      overlap += std::max(0.0, std::min(a.end_s, b.end_s) - std::max(a.begin_s, b.begin_s));
    }
  }
  EXPECT_GT(overlap, 0.0);
  EXPECT_THROW(TraceWriter("/nonexistent-dir/trace.json"), Error);
}

}  // namespace
}  // namespace kvpr::worker
