// The planner protocol's wire adapter: the only code that touches the generated planner.capnp
// types. Encoders fill builders from kvpr's own structs; decoders read a received message and
// check every field before anything uses it, failing with kvpr::Error(failed) naming the field
// and its value ("invalid plan request: model.h = 0 (expected 1..131072)"). Readers may also
// throw Cap'n Proto exceptions on malformed bytes, so decoders run inside net::decode_guard.
// Used by the service's router thread and by RemotePlanner's callers; stateless.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/common/profile.h"
#include "kvpr/planner/planner.h"
#include "kvpr/planner/step_model.h"
#include "schemas/planner.capnp.h"

namespace kvpr::planner::wire_adapter {

// Bounds of what a replica accepts. Sequences per request are those of one batch.
inline constexpr std::int64_t kMaxSequences = 4096;
inline constexpr std::int64_t kMaxContext = std::int64_t{1} << 24;
inline constexpr std::int64_t kMaxHostThreads = 4096;
inline constexpr std::int64_t kMaxLayers = 1024;
inline constexpr std::int64_t kMaxWidth = std::int64_t{1} << 17;  // h, h_kv, heads, head_dim
inline constexpr std::int64_t kMaxFfn = std::int64_t{1} << 20;
inline constexpr std::int64_t kMaxBlockTokens = std::int64_t{1} << 16;
inline constexpr std::size_t kMaxCurvePoints = 1024;
inline constexpr std::size_t kMaxFingerprintBytes = 1024;
inline constexpr std::size_t kMaxTextBytes = 4096;

wire::Policy encode_policy(Policy policy);
Policy decode_policy(wire::Policy policy, std::string_view field);

void encode_profile(const HardwareProfile& profile, wire::Profile::Builder out);
HardwareProfile decode_profile(wire::Profile::Reader in);

struct DecodedPlanRequest {
  PlanRequest request;  // shape and n_layers taken from `model`
  StepShape model;      // n_layers, h, h_kv, ffn, gated_ffn, p, block_tokens
  std::string fingerprint;
};

// The model shape sent is `model`, with h, h_kv, p and n_layers taken from the request where it
// sets them (non-zero): the request describes the step, the model what a request cannot say.
void encode_plan_request(const PlanRequest& request, const StepShape& model,
                         std::string_view fingerprint, wire::PlanRequest::Builder out);
DecodedPlanRequest decode_plan_request(wire::PlanRequest::Reader in);

// `fingerprint`: the profile the plan was made with (empty: the cost model).
void encode_plan(const Plan& plan, std::string_view fingerprint, wire::Plan::Builder out);
// Checks l against the request's context lengths `s`.
Plan decode_plan(wire::Plan::Reader in, const std::vector<std::int64_t>& s);

}  // namespace kvpr::planner::wire_adapter
