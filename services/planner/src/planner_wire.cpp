#include "planner_wire.h"

#include <cmath>
#include <limits>

#include "kvpr/common/error.h"

namespace kvpr::planner::wire_adapter {
namespace {

void check_int(std::string_view what, std::string_view field, std::int64_t value, std::int64_t lo,
               std::int64_t hi) {
  if (value < lo || value > hi) {
    fail("invalid ", what, ": ", field, " = ", value, " (expected ", lo, "..", hi, ")");
  }
}

// Finite and ≥ 0 (or > 0 when `positive`).
void check_real(std::string_view what, std::string_view field, double value,
                bool positive = false) {
  if (!std::isfinite(value) || value < 0 || (positive && value == 0)) {
    fail("invalid ", what, ": ", field, " = ", value, " (expected a finite number ",
         positive ? "> 0" : ">= 0", ")");
  }
}

std::string text(std::string_view what, std::string_view field, capnp::Text::Reader in,
                 std::size_t max_bytes) {
  if (in.size() > max_bytes) {
    fail("invalid ", what, ": ", field, " has ", in.size(), " bytes (at most ", max_bytes, ")");
  }
  return {in.cStr(), in.size()};
}

void encode_curve(const Curve& curve, capnp::List<wire::Point>::Builder out) {
  for (std::size_t i = 0; i < curve.x.size(); ++i) {
    out[static_cast<unsigned>(i)].setX(curve.x[i]);
    out[static_cast<unsigned>(i)].setY(curve.y[i]);
  }
}

Curve decode_curve(std::string_view field, capnp::List<wire::Point>::Reader in) {
  constexpr std::string_view kWhat = "profile";
  if (in.size() == 0 || in.size() > kMaxCurvePoints) {
    fail("invalid profile: ", field, " has ", in.size(), " points (expected 1..", kMaxCurvePoints,
         ")");
  }
  Curve curve;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const double x = in[static_cast<unsigned>(i)].getX();
    const double y = in[static_cast<unsigned>(i)].getY();
    const std::string point = str(field, "[", i, "]");
    check_real(kWhat, point + ".x", x, true);
    check_real(kWhat, point + ".y", y, true);
    if (i > 0 && !(x > curve.x.back())) {
      fail("invalid profile: ", point, ".x = ", x,
           " is not above the previous x = ", curve.x.back(), " (x must increase)");
    }
    curve.x.push_back(x);
    curve.y.push_back(y);
  }
  return curve;
}

}  // namespace

wire::Policy encode_policy(Policy policy) {
  switch (policy) {
    case Policy::resident:
      return wire::Policy::RESIDENT;
    case Policy::transfer:
      return wire::Policy::TRANSFER;
    case Policy::recompute:
      return wire::Policy::RECOMPUTE;
    case Policy::kvpr:
      return wire::Policy::KVPR;
  }
  return wire::Policy::KVPR;
}

Policy decode_policy(wire::Policy policy, std::string_view field) {
  switch (policy) {
    case wire::Policy::RESIDENT:
      return Policy::resident;
    case wire::Policy::TRANSFER:
      return Policy::transfer;
    case wire::Policy::RECOMPUTE:
      return Policy::recompute;
    case wire::Policy::KVPR:
      return Policy::kvpr;
  }
  fail("invalid message: ", field, " = ", static_cast<int>(policy),
       " is not a policy (expected 0..3: resident, transfer, recompute, kvpr)");
}

void encode_profile(const HardwareProfile& p, wire::Profile::Builder out) {
  out.setFingerprint(p.fingerprint);
  out.setBackend(p.backend);
  out.setDescription(p.description);
  out.setCreated(p.created);
  out.setH(p.h);
  out.setHKv(p.h_kv);
  out.setNHeads(p.n_heads);
  out.setHeadDim(p.head_dim);
  out.setFfn(p.ffn);
  encode_curve(p.h2d_bytes_per_s,
               out.initH2dBytesPerS(static_cast<unsigned>(p.h2d_bytes_per_s.x.size())));
  encode_curve(p.d2h_bytes_per_s,
               out.initD2hBytesPerS(static_cast<unsigned>(p.d2h_bytes_per_s.x.size())));
  encode_curve(p.recompute_flops_per_s,
               out.initRecomputeFlopsPerS(static_cast<unsigned>(p.recompute_flops_per_s.x.size())));
  out.setAttentionSPerToken(p.attention_s_per_token);
  out.setAttentionSPerQuery(p.attention_s_per_query);
  out.setOtherSPerLayer(p.other_s_per_layer);
  out.setOtherSPerRow(p.other_s_per_row);
  out.setVocab(p.vocab);
  out.setHeadS(p.head_s);
  out.setHeadSPerRow(p.head_s_per_row);
}

HardwareProfile decode_profile(wire::Profile::Reader in) {
  constexpr std::string_view kWhat = "profile";
  HardwareProfile p;
  p.fingerprint = text(kWhat, "fingerprint", in.getFingerprint(), kMaxFingerprintBytes);
  if (p.fingerprint.empty()) fail("invalid profile: fingerprint is empty");
  p.backend = text(kWhat, "backend", in.getBackend(), kMaxTextBytes);
  p.description = text(kWhat, "description", in.getDescription(), kMaxTextBytes);
  p.created = text(kWhat, "created", in.getCreated(), kMaxTextBytes);
  p.h = in.getH();
  p.h_kv = in.getHKv();
  p.n_heads = in.getNHeads();
  p.head_dim = in.getHeadDim();
  p.ffn = in.getFfn();
  p.vocab = in.getVocab();
  check_int(kWhat, "h", p.h, 1, kMaxWidth);
  check_int(kWhat, "hKv", p.h_kv, 1, kMaxWidth);
  check_int(kWhat, "nHeads", p.n_heads, 0, kMaxWidth);
  check_int(kWhat, "headDim", p.head_dim, 0, kMaxWidth);
  check_int(kWhat, "ffn", p.ffn, 0, kMaxFfn);
  check_int(kWhat, "vocab", p.vocab, 0, kMaxContext);
  p.h2d_bytes_per_s = decode_curve("h2dBytesPerS", in.getH2dBytesPerS());
  p.d2h_bytes_per_s = decode_curve("d2hBytesPerS", in.getD2hBytesPerS());
  p.recompute_flops_per_s = decode_curve("recomputeFlopsPerS", in.getRecomputeFlopsPerS());
  p.attention_s_per_token = in.getAttentionSPerToken();
  p.attention_s_per_query = in.getAttentionSPerQuery();
  p.other_s_per_layer = in.getOtherSPerLayer();
  p.other_s_per_row = in.getOtherSPerRow();
  p.head_s = in.getHeadS();
  p.head_s_per_row = in.getHeadSPerRow();
  check_real(kWhat, "attentionSPerToken", p.attention_s_per_token);
  check_real(kWhat, "attentionSPerQuery", p.attention_s_per_query);
  check_real(kWhat, "otherSPerLayer", p.other_s_per_layer);
  check_real(kWhat, "otherSPerRow", p.other_s_per_row);
  check_real(kWhat, "headS", p.head_s);
  check_real(kWhat, "headSPerRow", p.head_s_per_row);
  return p;
}

void encode_plan_request(const PlanRequest& request, const StepShape& model,
                         std::string_view fingerprint, wire::PlanRequest::Builder out) {
  auto shape = out.initModel();
  shape.setNLayers(request.n_layers > 0 ? request.n_layers : model.n_layers);
  shape.setH(request.shape.h > 0 ? request.shape.h : model.h);
  shape.setHKv(request.shape.h_kv > 0 ? request.shape.h_kv : model.h_kv);
  shape.setFfn(model.ffn);
  shape.setGatedFfn(model.gated_ffn);
  shape.setElementBytes(request.shape.p > 0 ? request.shape.p : model.p);
  shape.setBlockTokens(model.block_tokens);
  auto s = out.initS(static_cast<unsigned>(request.s.size()));
  for (std::size_t i = 0; i < request.s.size(); ++i) s.set(static_cast<unsigned>(i), request.s[i]);
  out.setPolicy(encode_policy(request.policy));
  out.setSplit(request.split ? *request.split : -1);
  out.setHostSplit(request.host_split ? *request.host_split : -1);
  out.setHostThreads(request.host_threads);
  out.setBytesPerS(request.rates.bytes_per_s);
  out.setFlopsPerS(request.rates.flops_per_s);
  out.setFingerprint(capnp::Text::Reader(fingerprint.data(), fingerprint.size()));
}

DecodedPlanRequest decode_plan_request(wire::PlanRequest::Reader in) {
  constexpr std::string_view kWhat = "plan request";
  DecodedPlanRequest out;
  const auto shape = in.getModel();
  StepShape& m = out.model;
  m.n_layers = shape.getNLayers();
  m.h = shape.getH();
  m.h_kv = shape.getHKv();
  m.ffn = shape.getFfn();
  m.gated_ffn = shape.getGatedFfn();
  m.p = shape.getElementBytes();
  m.block_tokens = shape.getBlockTokens();
  check_int(kWhat, "model.nLayers", m.n_layers, 1, kMaxLayers);
  check_int(kWhat, "model.h", m.h, 1, kMaxWidth);
  check_int(kWhat, "model.hKv", m.h_kv, 1, kMaxWidth);
  check_int(kWhat, "model.ffn", m.ffn, 0, kMaxFfn);
  if (m.p != 2 && m.p != 4) {
    fail("invalid plan request: model.elementBytes = ", m.p, " (expected 2 or 4)");
  }
  check_int(kWhat, "model.blockTokens", m.block_tokens, 1, kMaxBlockTokens);

  PlanRequest& r = out.request;
  r.shape = {m.h, m.h_kv, m.p};
  r.n_layers = m.n_layers;
  const auto s = in.getS();
  if (s.size() == 0 || s.size() > static_cast<std::size_t>(kMaxSequences)) {
    fail("invalid plan request: s has ", s.size(), " sequences (expected 1..", kMaxSequences, ")");
  }
  r.s.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    r.s.push_back(s[static_cast<unsigned>(i)]);
    check_int(kWhat, str("s[", i, "]"), r.s.back(), 0, kMaxContext);
  }
  r.policy = decode_policy(in.getPolicy(), "policy");
  const std::int64_t split = in.getSplit();
  check_int(kWhat, "split", split, -1, kMaxContext);
  if (split >= 0) r.split = split;
  const std::int64_t host_split = in.getHostSplit();
  check_int(kWhat, "hostSplit", host_split, -1, kMaxContext);
  if (host_split >= 0) r.host_split = host_split;
  r.host_threads = in.getHostThreads();
  check_int(kWhat, "hostThreads", r.host_threads, 0, kMaxHostThreads);
  r.rates.bytes_per_s = in.getBytesPerS();
  r.rates.flops_per_s = in.getFlopsPerS();
  check_real(kWhat, "bytesPerS", r.rates.bytes_per_s);
  check_real(kWhat, "flopsPerS", r.rates.flops_per_s);
  out.fingerprint = text(kWhat, "fingerprint", in.getFingerprint(), kMaxFingerprintBytes);
  return out;
}

void encode_plan(const Plan& plan, std::string_view fingerprint, wire::Plan::Builder out) {
  out.setPolicy(encode_policy(plan.policy));
  auto l = out.initL(static_cast<unsigned>(plan.l.size()));
  for (std::size_t i = 0; i < plan.l.size(); ++i) l.set(static_cast<unsigned>(i), plan.l[i]);
  out.setChunk(plan.chunk);
  out.setPaperSchedule(plan.paper_schedule);
  out.setRatio(plan.ratio);
  out.setPredictedStepS(plan.predicted_step_s);
  out.setReason(plan.reason);
  out.setFingerprint(capnp::Text::Reader(fingerprint.data(), fingerprint.size()));
  auto m = out.initM(static_cast<unsigned>(plan.m.size()));
  for (std::size_t i = 0; i < plan.m.size(); ++i) m.set(static_cast<unsigned>(i), plan.m[i]);
  out.setHostRatio(plan.host_ratio);
}

Plan decode_plan(wire::Plan::Reader in, const std::vector<std::int64_t>& s) {
  constexpr std::string_view kWhat = "plan";
  Plan plan;
  plan.policy = decode_policy(in.getPolicy(), "plan.policy");
  const auto l = in.getL();
  if (l.size() != s.size()) {
    fail("invalid plan: ", l.size(), " splits for ", s.size(), " sequences");
  }
  for (std::size_t i = 0; i < l.size(); ++i) {
    plan.l.push_back(l[static_cast<unsigned>(i)]);
    check_int(kWhat, str("l[", i, "]"), plan.l.back(), 0, s[i]);
  }
  plan.chunk = in.getChunk();
  check_int(kWhat, "chunk", plan.chunk, 0, std::numeric_limits<std::int64_t>::max());
  plan.paper_schedule = in.getPaperSchedule();
  plan.ratio = in.getRatio();
  plan.predicted_step_s = in.getPredictedStepS();
  if (!std::isfinite(plan.ratio) || plan.ratio < 0 || plan.ratio > 1) {
    fail("invalid plan: ratio = ", plan.ratio, " (expected 0..1)");
  }
  plan.reason = text(kWhat, "reason", in.getReason(), 1u << 16);
  const auto m = in.getM();
  if (m.size() != 0 && m.size() != s.size()) {
    fail("invalid plan: ", m.size(), " host splits for ", s.size(), " sequences");
  }
  for (std::size_t i = 0; i < m.size(); ++i) {
    plan.m.push_back(m[static_cast<unsigned>(i)]);
    check_int(kWhat, str("m[", i, "]"), plan.m.back(), plan.l[i], s[i]);
  }
  plan.host_ratio = in.getHostRatio();
  if (!std::isfinite(plan.host_ratio) || plan.host_ratio < 0 || plan.host_ratio > 1) {
    fail("invalid plan: hostRatio = ", plan.host_ratio, " (expected 0..1)");
  }
  return plan;
}

}  // namespace kvpr::planner::wire_adapter
