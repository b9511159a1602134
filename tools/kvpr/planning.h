// Shared by `kvpr profile`, `kvpr plan` and `kvpr bench`: the measured profile, and how decisions
// are shown.
#pragma once

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kvpr/common/model_config.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/planner/step_model.h"

namespace kvpr::cli {

// The cached profile of this backend and model shape, measured (and cached) when absent.
HardwareProfile measured_profile(const BackendFlags& flags, const ModelConfig& config,
                                 bool remeasure);
void print_profile(const HardwareProfile& profile);

nlohmann::json phases_json(const planner::StepPrediction& p);
nlohmann::json decision_json(const planner::Decision& d, const ModelConfig& config);
// Throughput mode's plan (planner::plan_throughput): micro-batch size, micro-batches, weight share
// and split that maximise predicted tokens/s for `total` sequences of `context` tokens within the
// device budget, with every (b, G) searched and the command that runs it.
nlohmann::json throughput_json(const planner::ProfilePlanner& planner, const ModelConfig& config,
                               std::int64_t total, std::int64_t context,
                               std::uint64_t device_memory, planner::Policy policy);
void print_throughput_plan(const nlohmann::json& plan);
void print_plan(const nlohmann::json& plan);

}  // namespace kvpr::cli
