// `kvpr profile` and `kvpr plan`: the measured hardware profile, and the scheduler's decision for a
// batch shape with the predicted phases, the curve T(l) and the reason.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/modelgen/gen_model.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/worker/profiler.h"
#include "planning.h"

namespace kvpr::cli {

int profile_command(const ProfileOptions& options) {
  const ModelConfig config =
      options.model.empty() ? modelgen::preset(options.preset) : Checkpoint(options.model).config();
  const auto backend_opts = backend_options(options.backend, config.dtype);
  auto backend = kernels::make_backend(backend_opts);
  worker::ProfileOptions po;
  if (options.quick) {
    po.max_copy_bytes = 16ull << 20;
    po.max_rows = 512;
    po.seconds_per_point = 0.01;
  }
  po.on_progress = [&](const std::string& what) {
    if (!options.json) std::fprintf(stderr, "measuring %s...\n", what.c_str());
  };
  const auto profile =
      worker::cached_profile(*backend, backend_opts, config, options.remeasure, po);
  if (!options.out.empty()) save_profile(profile, options.out);
  if (options.json) {
    std::printf("%s\n", profile.to_json().c_str());
  } else {
    print_profile(profile);
  }
  return 0;
}

int plan_command(const PlanOptions& options) {
  if (options.batch < 1) fail("--batch must be at least 1, got ", options.batch);
  if (options.context < 1) fail("--context must be at least 1, got ", options.context);
  if (options.workload != "latency" && options.workload != "throughput") {
    fail("--workload must be latency or throughput, got '", options.workload, "'");
  }
  const Checkpoint checkpoint(options.model);
  const ModelConfig& c = checkpoint.config();
  const HardwareProfile profile = options.profile.empty()
                                      ? measured_profile(options.backend, c, false)
                                      : load_profile(options.profile);
  planner::ProfilePlanner planner(
      profile, worker::step_shape(c, worker::store_block_tokens(options.backend.backend, c)));
  nlohmann::json out;
  if (options.workload == "latency") {
    const std::vector<std::int64_t> s(static_cast<std::size_t>(options.batch), options.context);
    out = decision_json(planner.decide(s), c);
  } else {
    out = throughput_json(planner, c, options.batch, options.context, options.device_memory,
                          planner::parse_policy(options.policy));
  }
  out["workload"] = options.workload;
  out["profile"] = profile.description;
  if (options.json) {
    std::printf("%s\n", out.dump(1).c_str());
  } else if (options.workload == "throughput") {
    print_throughput_plan(out);
  } else {
    print_plan(out);
  }
  return 0;
}

}  // namespace kvpr::cli
