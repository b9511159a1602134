// kvpr-bench-decode: times decode steps of a real-shaped model under each KV policy and compares
// them with the lower bound of DESIGN.md §1 computed from rates measured on the same backend.
//
// For each batch size b and context length s: b prompts of s random tokens are prefilled, then
// `--steps` decode steps (after `--warmup` untimed ones) run under
//   resident          K,V kept on the device (the floor: no KV loading at all)
//   transfer          every K,V row fetched from the host store each step
//   kvpr-paper        the paper's schedule: all activation rows [0, l) land as one chunk, then
//                     K,V are recomputed while K,V of [l, s) stream (split l chosen for T_paper)
//   kvpr-pipelined    activations stream in chunks of --chunk rows, each recomputed as it lands
//                     (split l chosen for T_pipe)
// The splits come from the measured rates B (copies of one store span from the store's
// registered memory) and F (the [m, h] × [h, 2·h_kv] GEMM at m = b·s, capped). Reported per
// policy: wall time per step, the engine's phase times, KV-load time (step time minus resident's
// step time), and LB = layers · min over l of max((A(l)+K(l))/B, 4·l·h·h_kv/F).
//
// Model: --model DIR is reused when it holds a checkpoint; otherwise the preset (default opt-6.7b,
// --layers 2, --dtype f16) is generated there, with max_position_embeddings raised to cover the
// longest context.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "decode_bench_support.h"
#include "kvpr/common/checkpoint.h"
#include "kvpr/common/error.h"
#include "kvpr/kernels/registry.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/planner/cost_model.h"
#include "kvpr/planner/planner.h"
#include "kvpr/worker/device_model.h"
#include "kvpr/worker/engine.h"

namespace {

using namespace kvpr;
using nlohmann::json;
using planner::choose_split;
using planner::kPaperChunk;
using planner::layer_cost;
using planner::LayerShape;
using planner::lower_bound_s;
using planner::Rates;
using planner::splits_for_ratio;

struct Options {
  std::string backend = "cpu";
  std::vector<std::int64_t> batch = {1};
  std::vector<std::int64_t> context = {1024};
  std::int64_t steps = 5;
  std::int64_t warmup = 1;
  std::string json_path;
  std::string preset = "opt-6.7b";
  std::int64_t layers = 2;
  std::string dtype = "f16";
  std::string compute_dtype;  // default: f16 on cuda, f32 on cpu
  std::string model_dir;
  std::int64_t block_tokens = 256;
  std::int64_t chunk = 512;
  std::vector<std::string> policies = {"resident", "transfer", "kvpr-paper", "kvpr-pipelined"};
  bool register_store = true;
};

DType parse_dtype(std::string_view flag, std::string_view name) {
  if (name == "f32") return DType::f32;
  if (name == "f16") return DType::f16;
  if (name == "bf16") return DType::bf16;
  fail(flag, ": '", name, "' is not f32, f16 or bf16");
}

// The checkpoint to run: reused when DIR holds one, generated otherwise.
std::string prepare_model(const Options& o, std::int64_t max_positions) {
  std::string dir = o.model_dir;
  if (dir.empty()) {
    dir = (std::filesystem::temp_directory_path() /
           str("kvpr-bench-", o.preset, "-", o.layers, "l-", o.dtype, "-p", max_positions))
              .string();
  }
  if (std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    const ModelConfig c = load_model_config(std::filesystem::path(dir) / "config.json");
    if (c.max_positions < max_positions) {
      fail("--model ", dir, ": max_position_embeddings ", c.max_positions, " < the ", max_positions,
           " positions this run needs (use another --model directory)");
    }
    std::fprintf(stderr, "kvpr-bench-decode: reusing the checkpoint in %s\n", dir.c_str());
    return dir;
  }
  modelgen::GenOptions gen;
  gen.config = modelgen::preset(o.preset);
  gen.config.n_layers = o.layers;
  gen.config.dtype = parse_dtype("--dtype", o.dtype);
  gen.config.max_positions = std::max(gen.config.max_positions, max_positions);
  gen.out = dir;
  gen.seed = 1;
  gen.write_tokenizer = false;
  std::fprintf(stderr, "kvpr-bench-decode: generating %s (%lld layers, %s) in %s\n",
               o.preset.c_str(), static_cast<long long>(o.layers), o.dtype.c_str(), dir.c_str());
  modelgen::generate_model(gen);
  return dir;
}

struct PolicyRun {
  std::string name;
  planner::Policy policy;
  std::optional<std::int64_t> split;
  std::int64_t chunk;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Prefills `prompts` on `engine`; returns the handles.
std::vector<kvstore::SeqId> prefill(worker::Engine& engine,
                                    const std::vector<std::vector<std::int32_t>>& prompts,
                                    double& seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<kvstore::SeqId> seqs;
  seqs.reserve(prompts.size());
  std::vector<float> logits;
  for (const auto& p : prompts) seqs.push_back(engine.prefill(p, logits));
  seconds = seconds_since(t0);
  return seqs;
}

// Runs warmup + steps decode steps of `seqs`; the timed ones go into the returned JSON.
json decode_steps(worker::Engine& engine, const std::vector<kvstore::SeqId>& seqs, const Options& o,
                  std::mt19937& rng, std::int64_t vocab) {
  std::uniform_int_distribution<std::int32_t> id(3, static_cast<std::int32_t>(vocab - 1));
  json steps = json::array();
  std::vector<double> walls;
  worker::PhaseTimes sum;
  std::uint64_t h2d = 0, d2h = 0;
  const std::int64_t s_start = engine.length(seqs.front());
  for (std::int64_t i = 0; i < o.warmup + o.steps; ++i) {
    std::vector<std::int32_t> tokens(seqs.size());
    for (auto& t : tokens) t = id(rng);
    const auto t0 = std::chrono::steady_clock::now();
    engine.decode(seqs, tokens);
    const double wall = seconds_since(t0);
    if (i < o.warmup) continue;
    const auto& st = engine.last_step();
    walls.push_back(wall);
    sum += st.times;
    h2d += st.h2d_bytes;
    d2h += st.d2h_bytes;
    steps.push_back({{"wall_s", wall},
                     {"transfer_s", st.times.transfer},
                     {"recompute_s", st.times.recompute},
                     {"attention_s", st.times.attention},
                     {"other_s", st.times.other},
                     {"idle_s", st.times.idle}});
  }
  const auto n = static_cast<double>(walls.size());
  const auto& last = engine.last_step();
  return {{"s_start", s_start},
          {"split_l", last.plan.l.empty() ? 0 : last.plan.l.front()},
          {"plan_reason", last.plan.reason},
          {"recompute_tokens", last.recompute_tokens},
          {"transfer_tokens", last.transfer_tokens},
          {"median_step_s", median(walls)},
          {"min_step_s", *std::min_element(walls.begin(), walls.end())},
          {"mean_phases_s",
           {{"transfer", sum.transfer / n},
            {"recompute", sum.recompute / n},
            {"attention", sum.attention / n},
            {"other", sum.other / n},
            {"idle", sum.idle / n},
            {"total", sum.total / n}}},
          {"h2d_bytes_per_step", static_cast<double>(h2d) / n},
          {"d2h_bytes_per_step", static_cast<double>(d2h) / n},
          {"steps", steps}};
}

// The split that minimises the paper schedule's time T_paper under the measured rates.
std::int64_t paper_split(const LayerShape& shape, const std::vector<std::int64_t>& s,
                         const Rates& rates) {
  if (shape.h >= 2 * shape.h_kv) return 0;  // recomputing never pays (DESIGN.md §1)
  double best = 1e300;
  std::int64_t best_l = 0;
  for (int k = 0; k <= 256; ++k) {
    const auto l = splits_for_ratio(s, k / 256.0);
    const double t = layer_cost(shape, s, l, rates, kPaperChunk).paper_s;
    if (t < best) {
      best = t;
      best_l = l.front();
    }
  }
  return best_l;
}

json run_shape(const Options& o, kernels::Backend& backend, const worker::DeviceModel& model,
               std::int64_t b, std::int64_t s) {
  const ModelConfig& c = model.config();
  const std::int64_t per_policy = o.warmup + o.steps;
  std::int64_t shared_policies = 0;
  for (const auto& p : o.policies) shared_policies += p != "resident";
  const std::int64_t tokens = s + per_policy * std::max<std::int64_t>(shared_policies, 1) + 1;
  const kvstore::StoreShape shape{c.n_layers, c.h, c.h_kv(), c.dtype, o.block_tokens};
  const std::int64_t blocks_per_seq = (tokens + o.block_tokens - 1) / o.block_tokens;
  const auto capacity =
      static_cast<std::uint64_t>(b * blocks_per_seq * c.n_layers) * shape.block_bytes();
  kvstore::LocalKvStore store(shape, capacity);
  std::optional<bench::StoreRegistration> registration;
  if (o.register_store) registration.emplace(backend, store, b * blocks_per_seq * o.block_tokens);

  // Rates: B for one K span (block_tokens rows) from the store's memory, F at m = b·s (capped).
  const std::size_t span_bytes =
      static_cast<std::size_t>(o.block_tokens) * shape.row_bytes(kvstore::Part::k);
  std::vector<std::byte> pageable;
  const std::byte* host = registration ? registration->first() : nullptr;
  std::size_t host_bytes = registration ? registration->first_bytes() : 0;
  if (host == nullptr || host_bytes < span_bytes) {
    pageable.assign(std::max<std::size_t>(span_bytes * 16, std::size_t{64} << 20), std::byte{0});
    host = pageable.data();
    host_bytes = pageable.size();
  }
  bench::MeasuredRates measured;
  measured.span_bytes = span_bytes;
  measured.h2d_bytes_per_s =
      bench::measure_h2d(backend, host, host_bytes, c.dtype, span_bytes,
                         std::min<std::size_t>(host_bytes * 4, std::size_t{1} << 30));
  measured.gemm_m = std::min<std::int64_t>(b * s, 16384);
  measured.gemm_flops_per_s = bench::measure_gemm(backend, measured.gemm_m, c.h, c.h_kv());
  const LayerShape layer{c.h, c.h_kv(), static_cast<std::int64_t>(size_of(c.dtype))};
  const std::vector<std::int64_t> s_vec(static_cast<std::size_t>(b), s);
  const Rates rates = measured.rates();
  const double lb = static_cast<double>(c.n_layers) * lower_bound_s(layer, s_vec, rates);
  const std::int64_t l_paper = paper_split(layer, s_vec, rates);
  const std::int64_t l_pipe = choose_split(layer, s_vec, rates, o.chunk).l.front();

  std::mt19937 rng(static_cast<std::uint32_t>(b * 131 + s));
  std::uniform_int_distribution<std::int32_t> id(3, static_cast<std::int32_t>(c.vocab - 1));
  std::vector<std::vector<std::int32_t>> prompts(static_cast<std::size_t>(b));
  for (auto& p : prompts) {
    p.resize(static_cast<std::size_t>(s));
    for (auto& t : p) t = id(rng);
  }

  json runs = json::array();
  std::vector<kvstore::SeqId> shared;
  double shared_prefill_s = 0;
  for (const std::string& name : o.policies) {
    if (name == "resident") continue;
    PolicyRun pr{name, planner::Policy::transfer, std::nullopt, o.chunk};
    if (name == "kvpr-paper") pr = {name, planner::Policy::kvpr, l_paper, kPaperChunk};
    if (name == "kvpr-pipelined") pr = {name, planner::Policy::kvpr, l_pipe, o.chunk};
    planner::CostModelPlanner planner(pr.chunk);
    worker::Engine engine(model, backend, store, planner, {pr.policy, pr.split});
    if (shared.empty()) shared = prefill(engine, prompts, shared_prefill_s);
    std::fprintf(stderr, "kvpr-bench-decode: b %lld s %lld %s\n", static_cast<long long>(b),
                 static_cast<long long>(s), name.c_str());
    json r = decode_steps(engine, shared, o, rng, c.vocab);
    r["policy"] = name;
    r["chunk"] = pr.chunk == kPaperChunk ? json(nullptr) : json(pr.chunk);
    const std::vector<std::int64_t> l_vec(s_vec.size(), pr.split.value_or(0));
    const auto cost = layer_cost(layer, s_vec, l_vec, rates, pr.chunk);
    r["predicted_kv_load_s"] = static_cast<double>(c.n_layers) *
                               (name == "kvpr-pipelined" ? cost.pipelined_s : cost.paper_s);
    runs.push_back(r);
  }
  for (auto seq : shared) store.free(seq);
  double resident_prefill_s = 0;
  if (std::find(o.policies.begin(), o.policies.end(), "resident") != o.policies.end()) {
    planner::CostModelPlanner planner(o.chunk);
    worker::Engine engine(model, backend, store, planner,
                          {planner::Policy::resident, std::nullopt});
    const auto seqs = prefill(engine, prompts, resident_prefill_s);
    std::fprintf(stderr, "kvpr-bench-decode: b %lld s %lld resident\n", static_cast<long long>(b),
                 static_cast<long long>(s));
    json r = decode_steps(engine, seqs, o, rng, c.vocab);
    r["policy"] = "resident";
    r["chunk"] = nullptr;
    r["predicted_kv_load_s"] = 0.0;
    runs.push_back(r);
    for (auto seq : seqs) engine.release(seq);
  }

  // KV-load time: a step's time beyond resident's at the same shape.
  double resident_step = -1;
  for (const auto& r : runs) {
    if (r["policy"] == "resident") resident_step = r["median_step_s"].get<double>();
  }
  json summary = json::object();
  for (auto& r : runs) {
    if (resident_step >= 0) {
      const double kv_load = r["median_step_s"].get<double>() - resident_step;
      r["kv_load_s"] = kv_load;
      r["kv_load_over_lb"] = lb > 0 ? kv_load / lb : 0.0;
    } else {
      r["kv_load_s"] = nullptr;
    }
  }
  const auto find = [&](const char* name) -> const json* {
    for (const auto& r : runs) {
      if (r["policy"] == name) return &r;
    }
    return nullptr;
  };
  if (const json* t = find("transfer"), *p = find("kvpr-pipelined"); t != nullptr && p != nullptr) {
    summary["step_speedup_pipelined_vs_transfer"] =
        t->at("median_step_s").get<double>() / p->at("median_step_s").get<double>();
    if (!p->at("kv_load_s").is_null() && p->at("kv_load_s").get<double>() > 0) {
      summary["kv_load_speedup_pipelined_vs_transfer"] =
          t->at("kv_load_s").get<double>() / p->at("kv_load_s").get<double>();
      summary["pipelined_kv_load_over_lb"] = p->at("kv_load_s").get<double>() / lb;
    }
  }
  return {{"b", b},
          {"s", s},
          {"store_registered", registration ? json(registration->registered()) : json(false)},
          {"store_registered_bytes", registration ? registration->bytes() : 0},
          {"rates",
           {{"h2d_bytes_per_s", measured.h2d_bytes_per_s},
            {"h2d_span_bytes", measured.span_bytes},
            {"gemm_flops_per_s", measured.gemm_flops_per_s},
            {"gemm_m", measured.gemm_m}}},
          {"lb_s", lb},
          {"splits", {{"kvpr-paper", l_paper}, {"kvpr-pipelined", l_pipe}}},
          {"prefill_s", {{"shared", shared_prefill_s}, {"resident", resident_prefill_s}}},
          {"runs", runs},
          {"summary", summary}};
}

std::string fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

void print_shape(const json& shape) {
  std::printf("b %lld  s %lld  B %.2f GB/s  F %.1f TFLOP/s  LB %.3f ms  store registered: %s\n",
              static_cast<long long>(shape["b"].get<std::int64_t>()),
              static_cast<long long>(shape["s"].get<std::int64_t>()),
              shape["rates"]["h2d_bytes_per_s"].get<double>() / 1e9,
              shape["rates"]["gemm_flops_per_s"].get<double>() / 1e12,
              shape["lb_s"].get<double>() * 1e3,
              shape["store_registered"].get<bool>() ? "yes" : "no");
  std::printf("  %-15s %8s %10s %12s %12s %10s\n", "policy", "l", "step ms", "kv-load ms",
              "copy busy ms", "kv/LB");
  for (const auto& r : shape["runs"]) {
    const bool has_kv = !r["kv_load_s"].is_null();
    std::printf("  %-15s %8lld %10.3f %12s %12.3f %10s\n", r["policy"].get<std::string>().c_str(),
                static_cast<long long>(r["split_l"].get<std::int64_t>()),
                r["median_step_s"].get<double>() * 1e3,
                has_kv ? fixed(r["kv_load_s"].get<double>() * 1e3, 3).c_str() : "-",
                r["mean_phases_s"]["transfer"].get<double>() * 1e3,
                has_kv ? fixed(r["kv_load_over_lb"].get<double>(), 2).c_str() : "-");
  }
}

int run(const Options& o) {
  std::ofstream json_out;
  if (!o.json_path.empty()) {
    json_out.open(o.json_path);
    if (!json_out) fail("--json: cannot write '", o.json_path, "'");
  }
  kernels::BackendOptions bo;
  bo.name = o.backend;
  bo.compute_dtype = o.compute_dtype.empty() ? (o.backend == "cuda" ? DType::f16 : DType::f32)
                                             : parse_dtype("--compute-dtype", o.compute_dtype);
  const auto backend = kernels::make_backend(bo);  // fails at once without a usable device
  const std::int64_t max_s = *std::max_element(o.context.begin(), o.context.end());
  const std::int64_t positions = max_s + (o.warmup + o.steps) * 4 + 8;
  const std::string dir = prepare_model(o, positions);
  const Checkpoint checkpoint(dir);
  const worker::DeviceModel model(checkpoint, *backend, false);
  const ModelConfig& c = checkpoint.config();
  json shapes = json::array();
  for (std::int64_t b : o.batch) {
    for (std::int64_t s : o.context) {
      shapes.push_back(run_shape(o, *backend, model, b, s));
      print_shape(shapes.back());
    }
  }
  const json out = {{"tool", "kvpr-bench-decode"},
                    {"backend", backend->name()},
                    {"compute_dtype", safetensors_name(backend->compute_dtype())},
                    {"model",
                     {{"dir", dir},
                      {"preset", o.preset},
                      {"layers", c.n_layers},
                      {"h", c.h},
                      {"h_kv", c.h_kv()},
                      {"n_heads", c.n_heads},
                      {"dtype", safetensors_name(c.dtype)},
                      {"vocab", c.vocab}}},
                    {"block_tokens", o.block_tokens},
                    {"chunk", o.chunk},
                    {"warmup", o.warmup},
                    {"steps", o.steps},
                    {"shapes", shapes}};
  if (json_out) {
    json_out << out.dump(1) << "\n";
    if (!json_out) fail("--json: writing '", o.json_path, "' failed");
  }
  return 0;
}

}  // namespace

// A throw while wiring up (CLI11, bad_alloc) ends the process with its message: what a failed
// start should do.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  Options options;
  CLI::App app(
      "kvpr-bench-decode: decode steps of a real-shaped model under each KV policy, "
      "against the lower bound");
  app.add_option("--backend", options.backend, "cpu or cuda")->capture_default_str();
  app.add_option("--batch", options.batch, "batch sizes B[,B...]")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--context", options.context, "context lengths S[,S...]")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--steps", options.steps, "timed decode steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", options.warmup, "untimed decode steps first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--json", options.json_path, "also write the report to FILE");
  app.add_option("--model", options.model_dir, "checkpoint directory (generated when empty)");
  app.add_option("--preset", options.preset, "model preset to generate")->capture_default_str();
  app.add_option("--layers", options.layers, "layers of the generated model")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  const auto dtypes = CLI::IsMember({"f32", "f16", "bf16"});
  app.add_option("--dtype", options.dtype, "weight dtype")->check(dtypes)->capture_default_str();
  app.add_option("--compute-dtype", options.compute_dtype,
                 "compute dtype (default: f16 on cuda, f32 on cpu)")
      ->check(dtypes);
  app.add_option("--block-tokens", options.block_tokens, "KV store block size in tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--chunk", options.chunk, "rows per chunk of kvpr-pipelined")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--policies", options.policies, "policies to run, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember({"resident", "transfer", "kvpr-paper", "kvpr-pipelined"}))
      ->capture_default_str();
  bool no_register = false;
  app.add_flag("--no-register", no_register, "leave the store's memory unregistered");
  CLI11_PARSE(app, argc, argv);
  options.register_store = !no_register;
  try {
    return run(options);
  } catch (const std::exception& e) {
    // No half-written or empty report is left behind.
    std::error_code ignored;
    if (!options.json_path.empty()) std::filesystem::remove(options.json_path, ignored);
    std::fprintf(stderr, "kvpr-bench-decode: %s\n", e.what());
    return 1;
  }
}
