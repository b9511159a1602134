// The worker protocol's adapter: the only code that touches the generated worker.capnp types.
// Requests are decoded and validated against the loaded model here (a bad value is a
// kvpr::Error(failed) naming it); events are encoded here for the service and decoded here for
// the client.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvpr/planner/planner.h"
#include "kvpr/worker/batcher.h"
#include "kvpr/worker/generator.h"
#include "schemas/worker.capnp.h"

namespace kvpr::worker::wire_adapter {

struct ModelLimits {
  std::int64_t vocab = 0;
  std::int64_t max_positions = 0;
};

inline constexpr std::size_t kMaxSequences = 4096;
inline constexpr std::int64_t kMaxNewTokens = 1 << 20;

struct GenerateJob {
  GenerateRequest request;
  SamplingParams sampling;
  planner::Policy policy = planner::Policy::kvpr;
  std::optional<std::int64_t> split;
  std::optional<std::int64_t> host_split;
};

struct DecodedRequest {
  std::uint64_t id = 0;
  std::uint64_t deadline_unix_ms = 0;
  enum class Kind { generate, stats, cancel } kind = Kind::stats;
  GenerateJob job;                   // kind == generate
  std::uint64_t cancel_request = 0;  // kind == cancel
  std::int64_t cancel_index = -1;    // -1: every sequence
};

// Throws kvpr::Error(failed) for undecodable bytes, an unknown request type or an out-of-range
// field. `id` receives the request id as soon as it could be read (0 before), for the error reply.
DecodedRequest decode_request(const void* data, std::size_t size, const ModelLimits& limits,
                              std::uint64_t& id);

void encode_sampling(const SamplingParams& in, wire::Sampling::Builder out);
void encode_step(const JobStep& step, wire::Tokens::Builder out);
// Checks indices against the request's prompts (one per sequence), the logits against them and
// prompt scores against the prompts' lengths.
JobStep decode_step(wire::Tokens::Reader in, const std::vector<std::vector<std::int32_t>>& prompts,
                    bool keep_logits, std::vector<float>& logits);

void set_summary(wire::Summary::Builder out, const GenerateResult& result,
                 const std::string& worker);
// Fills the summary fields of `result` (not its sequences); the last plan's splits are checked
// against `s_max`, each sequence's prompt length plus its new tokens.
void get_summary(wire::Summary::Reader in, const std::vector<std::int64_t>& s_max,
                 GenerateResult& result);

}  // namespace kvpr::worker::wire_adapter
