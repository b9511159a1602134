#include "worker_wire.h"

#include <cmath>

#include "kvpr/common/error.h"
#include "kvpr/net/wire.h"
#include "planner_wire.h"

namespace kvpr::worker::wire_adapter {

namespace {

GenerateJob decode_generate(wire::Generate::Reader g, const ModelLimits& limits) {
  GenerateJob job;
  const auto prompts = g.getPrompts();
  if (prompts.size() == 0 || prompts.size() > kMaxSequences) {
    fail("generate: ", prompts.size(), " prompts; expected 1 to ", kMaxSequences);
  }
  const std::int64_t n_new = g.getMaxNewTokens();
  if (n_new < 1 || n_new > kMaxNewTokens) {
    fail("generate: maxNewTokens ", n_new, " is outside [1, ", kMaxNewTokens, "]");
  }
  for (unsigned i = 0; i < prompts.size(); ++i) {
    const auto p = prompts[i];
    if (p.size() == 0) fail("generate: prompt ", i, " is empty");
    if (static_cast<std::int64_t>(p.size()) + n_new > limits.max_positions) {
      fail("generate: prompt ", i, " has ", p.size(), " tokens; with ", n_new,
           " new tokens it passes the model's ", limits.max_positions, " positions");
    }
    std::vector<std::int32_t> ids;
    ids.reserve(p.size());
    for (const std::int32_t id : p) {
      if (id < 0 || id >= limits.vocab) {
        fail("generate: prompt ", i, " has token id ", id, " outside the vocabulary [0, ",
             limits.vocab, ")");
      }
      ids.push_back(id);
    }
    job.request.prompts.push_back(std::move(ids));
  }
  job.request.max_new_tokens = n_new;
  job.request.keep_logits = g.getKeepLogits();
  job.policy = planner::wire_adapter::decode_policy(g.getPolicy(), "generate.policy");
  const std::int64_t split = g.getSplit();
  if (split < -1) fail("generate: split ", split, " must be -1 (auto) or a token count");
  if (split >= 0) job.split = split;
  return job;
}

}  // namespace

DecodedRequest decode_request(const void* data, std::size_t size, const ModelLimits& limits,
                              std::uint64_t& id) {
  net::Frame frame(data, size);
  DecodedRequest out;
  net::decode_guard([&] {
    const auto r = frame.root<wire::WorkerRequest>();
    id = r.getId();
    out.id = id;
    out.deadline_unix_ms = r.getDeadlineUnixMs();
    switch (r.which()) {
      case wire::WorkerRequest::GENERATE:
        out.kind = DecodedRequest::Kind::generate;
        out.job = decode_generate(r.getGenerate(), limits);
        return;
      case wire::WorkerRequest::STATS:
        out.kind = DecodedRequest::Kind::stats;
        return;
    }
    raise(ErrorKind::unimplemented, "unknown worker request type ", static_cast<int>(r.which()));
  });
  return out;
}

void set_summary(wire::Summary::Builder out, const GenerateResult& result,
                 const std::string& worker) {
  out.setPrefillS(result.prefill_s);
  auto steps = out.initStepS(static_cast<unsigned>(result.step_s.size()));
  for (unsigned i = 0; i < result.step_s.size(); ++i) steps.set(i, result.step_s[i]);
  auto d = out.initDecode();
  const PhaseTimes& t = result.decode_times;
  d.setTransfer(t.transfer);
  d.setRecompute(t.recompute);
  d.setAttention(t.attention);
  d.setOther(t.other);
  d.setIdle(t.idle);
  d.setTotal(t.total);
  out.setRecomputeTokens(result.recompute_tokens);
  out.setTransferTokens(result.transfer_tokens);
  out.setH2dBytes(result.h2d_bytes);
  out.setD2hBytes(result.d2h_bytes);
  planner::wire_adapter::encode_plan(result.last_plan, "", out.initLastPlan());
  out.setTotalS(result.total_s);
  out.setWorker(worker);
}

void get_summary(wire::Summary::Reader in, const std::vector<std::int64_t>& s_max,
                 GenerateResult& result) {
  result.prefill_s = in.getPrefillS();
  result.step_s.clear();
  for (const double s : in.getStepS()) result.step_s.push_back(s);
  const auto d = in.getDecode();
  result.decode_times = {d.getTransfer(), d.getRecompute(), d.getAttention(),
                         d.getOther(),    d.getIdle(),      d.getTotal()};
  result.recompute_tokens = in.getRecomputeTokens();
  result.transfer_tokens = in.getTransferTokens();
  result.h2d_bytes = in.getH2dBytes();
  result.d2h_bytes = in.getD2hBytes();
  result.last_plan = planner::wire_adapter::decode_plan(in.getLastPlan(), s_max);
  result.total_s = in.getTotalS();
}

}  // namespace kvpr::worker::wire_adapter
