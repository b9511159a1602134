// A stale profile corrects itself on the real engine: the CPU backend with an emulated link runs
// decode steps planned from a profile that claims a link ten times faster than the emulated one;
// after one window of steps the ProfileCorrector refits the rates, the planner re-plans from them,
// the refitted profile is written to the cache, and the prediction error of the next steps is a
// fraction of what it was. And the profiler itself measures no copy faster than the link.
#include "kvpr/worker/profile_drift.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "kvpr/kernels/registry.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/worker/profiler.h"
#include "stack.h"

namespace kvpr::worker {
namespace {

constexpr double kLinkGbps = 0.005;  // link-bound: the tiny model's compute is noise beside it
constexpr std::int64_t kWindow = 8;
constexpr double kMargin = 0.15;

std::filesystem::path scratch_dir() {
  static const auto dir = [] {
    auto p = std::filesystem::temp_directory_path() /
             ("kvpr-profile-drift-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    return p;
  }();
  return dir;
}

std::string tiny_model() {
  static const std::string dir = [] {
    modelgen::GenOptions options;
    options.config = modelgen::preset("opt-tiny");
    options.out = scratch_dir() / "opt-tiny";
    options.seed = 7;
    options.write_tokenizer = false;
    modelgen::generate_model(options);
    return options.out.string();
  }();
  return dir;
}

// |predicted / measured − 1| of one step under `profile`.
double error(const HardwareProfile& profile, const planner::StepShape& model,
             const StepStats& step) {
  const auto observed = observed_step(model, step);
  return std::abs(planner::predict_step(profile, observed.shape).total_s / step.times.total - 1);
}

TEST(ProfileDrift, AProfileClaimingATenTimesFasterLinkIsCorrectedAfterOneWindow) {
  const kernels::BackendOptions backend_options{"cpu", kLinkGbps, 0, 1, DType::f32};
  testing::Stack stack(tiny_model(), planner::Policy::kvpr, std::nullopt, 1ull << 28,
                       backend_options);
  const ModelConfig& c = stack.checkpoint.config();

  // This machine's profile, measured quickly, then made stale: a link ten times faster.
  ProfileOptions po;
  po.max_copy_bytes = 1 << 20;
  po.max_rows = 256;
  po.seconds_per_point = 0.002;
  const auto fingerprint = hardware_fingerprint(backend_options, c);
  HardwareProfile stale = measure_profile(*stack.backend, c, fingerprint, po);
  for (auto& y : stale.h2d_bytes_per_s.y) y *= 10;
  for (auto& y : stale.d2h_bytes_per_s.y) y *= 10;

  const planner::StepShape model = step_shape(c, stack.store->shape().block_tokens);
  planner::ProfilePlanner scheduler(stale, model, 16);
  const auto cache = scratch_dir() / "refitted.json";
  ProfileCorrector corrector(
      stale, model, {kMargin, kWindow},
      [&](const HardwareProfile& refit) { scheduler.update_profile(refit); }, cache);
  Engine engine(*stack.model, *stack.backend, *stack.store, scheduler,
                {planner::Policy::kvpr, std::nullopt, false});

  std::vector<SeqHandle> seqs;
  std::vector<float> logits;
  for (std::int64_t n : {150, 120}) {
    std::vector<std::int32_t> prompt(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int32_t>(3 + i);
    seqs.push_back(engine.prefill(prompt, logits));
  }
  const std::vector<std::int32_t> tokens = {7, 9};

  double before = 0;
  for (std::int64_t i = 0; i < kWindow; ++i) {
    engine.decode(seqs, tokens);
    before += error(stale, model, engine.last_step()) / kWindow;
    const bool refitted = corrector.observe(engine.last_step());
    EXPECT_EQ(refitted, i + 1 == kWindow) << "step " << i;
  }
  ASSERT_EQ(corrector.refits(), 1);
  EXPECT_GT(corrector.ratio(), 1 + kMargin);
  const HardwareProfile refit = corrector.profile();
  EXPECT_EQ(scheduler.profile().h2d_bytes_per_s.y, refit.h2d_bytes_per_s.y);
  // The refitted link is far slower than the claimed one, near the emulated 0.02 GB/s.
  EXPECT_LT(refit.h2d_bytes_per_s.y.back(), stale.h2d_bytes_per_s.y.back() / 3);
  const std::int64_t plans_before = scheduler.plans_computed();

  double after = 0;
  for (std::int64_t i = 0; i < kWindow; ++i) {
    engine.decode(seqs, tokens);
    after += error(refit, model, engine.last_step()) / kWindow;
    corrector.observe(engine.last_step());
  }
  EXPECT_GT(scheduler.plans_computed(), plans_before) << "the plans were not made again";
  EXPECT_GT(before, 0.5) << "the stale profile should mispredict a link-bound step badly";
  EXPECT_LT(after, before / 4) << "before " << before << ", after " << after;
  EXPECT_LT(after, 2 * kMargin) << "before " << before << ", after " << after;

  // The next run starts from the latest refit (a second window may have refitted again on a
  // machine busy with other work).
  ASSERT_TRUE(std::filesystem::exists(cache));
  const HardwareProfile cached = load_profile(cache);
  EXPECT_EQ(cached.fingerprint, fingerprint);
  EXPECT_EQ(cached.h2d_bytes_per_s.y, corrector.profile().h2d_bytes_per_s.y);
  for (auto seq : seqs) engine.release(seq);
}

// An emulated link lets no copy through faster than its rate, so no point of the profile's copy
// curves may claim more (timed one copy at a time on an idle queue, the block-sized copies a step
// streams read 10-20x faster than the link and the planner under-counted every fetch).
// On a GPU a store block is one copy per part and must be large enough to cross PCIe near the
// link's rate: K parts of at least 2 MiB, 16 to 256 tokens; the CPU backend keeps 16.
TEST(Profiler, StoreBlocksOnAGpuAreLargeEnoughForTheLink) {
  ModelConfig opt = modelgen::preset("opt-6.7b");
  opt.dtype = DType::f16;  // K rows of 8 KiB: 256 tokens make 2 MiB
  EXPECT_EQ(worker::store_block_tokens("cuda", opt), 256);
  EXPECT_EQ(worker::store_block_tokens("cpu", opt), kvstore::kBlockTokens);
  ModelConfig wide = opt;
  wide.dtype = DType::f32;
  wide.head_dim = 256;  // K rows of 32 KiB: 64 tokens make 2 MiB
  wide.h = wide.n_heads * wide.head_dim;
  wide.n_kv_heads = wide.n_heads;
  EXPECT_EQ(wide.h_kv() * 4, 32768);
  EXPECT_EQ(worker::store_block_tokens("cuda", wide), 64);
  const ModelConfig tiny = modelgen::preset("opt-tiny");  // capped: 256 tokens of a tiny row
  EXPECT_EQ(worker::store_block_tokens("cuda", tiny), 256);
}

TEST(Profiler, NoCopySizeIsMeasuredFasterThanTheEmulatedLink) {
  constexpr double kGbps = 0.05;
  const kernels::BackendOptions backend_options{"cpu", kGbps, 0, 1, DType::f32};
  auto backend = kernels::make_backend(backend_options);
  const ModelConfig c = modelgen::preset("opt-tiny");
  // Copies up to 64 KiB: the profiler times runs of at least 16 of them, and only the first copy
  // of a run may start its window before the timing does (at the enqueue, while the copy thread
  // was still waking), so a run can read at most 16/15 of the link however slow the wake-up.
  ProfileOptions po;
  po.max_copy_bytes = 1 << 16;
  po.max_rows = 64;
  po.seconds_per_point = 0.002;
  const HardwareProfile p = measure_profile(*backend, c, "test", po);
  ASSERT_GE(p.h2d_bytes_per_s.x.size(), 4u);
  for (const Curve* curve : {&p.h2d_bytes_per_s, &p.d2h_bytes_per_s}) {
    for (std::size_t i = 0; i < curve->x.size(); ++i) {
      EXPECT_LT(curve->y[i], 1.1 * kGbps * 1e9) << curve->x[i] << " bytes per copy";
      EXPECT_GT(curve->y[i], 0.0) << curve->x[i] << " bytes per copy";
    }
  }
  EXPECT_GT(p.host_attn_bytes_per_s, 0.0);
}

}  // namespace
}  // namespace kvpr::worker
