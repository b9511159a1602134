#include "worker_wire.h"

#include <cmath>

#include "kvpr/common/error.h"
#include "kvpr/net/wire.h"
#include "planner_wire.h"

namespace kvpr::worker::wire_adapter {

namespace {

SamplingParams decode_sampling(wire::Sampling::Reader in, const ModelLimits& limits) {
  SamplingParams p;
  p.temperature = in.getTemperature();
  p.top_k = in.getTopK();
  p.top_p = in.getTopP();
  if (in.getHasSeed()) p.seed = in.getSeed();
  p.presence_penalty = in.getPresencePenalty();
  p.frequency_penalty = in.getFrequencyPenalty();
  const auto stops = in.getStopTokenIds();
  if (stops.size() > kMaxStopTokenIds) {
    fail("generate: ", stops.size(), " stop token ids; at most ", kMaxStopTokenIds);
  }
  for (const std::int32_t id : stops) p.stop_token_ids.push_back(id);
  p.ignore_eos = in.getIgnoreEos();
  p.logprobs = in.getLogprobs();
  p.validate(limits.vocab);
  return p;
}

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
  job.request.score_prompt = g.getScorePrompt();
  job.policy = planner::wire_adapter::decode_policy(g.getPolicy(), "generate.policy");
  const std::int64_t split = g.getSplit();
  if (split < -1) fail("generate: split ", split, " must be -1 (auto) or a token count");
  if (split >= 0) job.split = split;
  const std::int64_t host_split = g.getHostSplit();
  if (host_split < -1) {
    fail("generate: hostSplit ", host_split, " must be -1 (the worker's) or a token index");
  }
  if (host_split >= 0) job.host_split = host_split;
  if (g.hasSampling()) job.sampling = decode_sampling(g.getSampling(), limits);
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
      case wire::WorkerRequest::CANCEL: {
        out.kind = DecodedRequest::Kind::cancel;
        const auto c = r.getCancel();
        out.cancel_request = c.getRequest();
        out.cancel_index = c.getIndex();
        if (out.cancel_index < -1 || out.cancel_index >= static_cast<std::int64_t>(kMaxSequences)) {
          fail("cancel: index ", out.cancel_index, " must be -1 (all) or a sequence");
        }
        return;
      }
    }
    raise(ErrorKind::unimplemented, "unknown worker request type ", static_cast<int>(r.which()));
  });
  return out;
}

void encode_sampling(const SamplingParams& in, wire::Sampling::Builder out) {
  out.setTemperature(in.temperature);
  out.setTopK(in.top_k);
  out.setTopP(in.top_p);
  out.setHasSeed(in.seed.has_value());
  out.setSeed(in.seed.value_or(0));
  out.setPresencePenalty(in.presence_penalty);
  out.setFrequencyPenalty(in.frequency_penalty);
  auto stops = out.initStopTokenIds(static_cast<unsigned>(in.stop_token_ids.size()));
  for (unsigned i = 0; i < in.stop_token_ids.size(); ++i) stops.set(i, in.stop_token_ids[i]);
  out.setIgnoreEos(in.ignore_eos);
  out.setLogprobs(in.logprobs);
}

namespace {

wire::FinishReason encode_finish(Finish f) {
  switch (f) {
    case Finish::stop:
      return wire::FinishReason::STOP;
    case Finish::length:
      return wire::FinishReason::LENGTH;
    case Finish::cancelled:
      break;
  }
  return wire::FinishReason::CANCELLED;
}

Finish decode_finish(wire::FinishReason f) {
  switch (f) {
    case wire::FinishReason::STOP:
      return Finish::stop;
    case wire::FinishReason::LENGTH:
      return Finish::length;
    case wire::FinishReason::CANCELLED:
      return Finish::cancelled;
  }
  fail("tokens: unknown finish reason ", static_cast<int>(f));
}

}  // namespace

void encode_step(const JobStep& step, wire::Tokens::Builder out) {
  const auto n = static_cast<unsigned>(step.tokens.size());
  out.setStep(step.step);
  auto tokens = out.initTokens(n);
  auto indices = out.initIndices(n);
  const bool with_logprobs = !step.tokens.empty() && step.with_logprobs;
  auto logprobs = out.initLogprobs(with_logprobs ? n : 0);
  const unsigned top_n = n == 0 ? 0 : static_cast<unsigned>(step.tokens[0].top.size());
  out.setTopN(top_n);
  auto top_ids = out.initTopIds(n * top_n);
  auto top_lp = out.initTopLogprobs(n * top_n);
  for (unsigned i = 0; i < n; ++i) {
    const TokenOut& t = step.tokens[i];
    tokens.set(i, t.token);
    indices.set(i, static_cast<std::uint32_t>(t.index));
    if (with_logprobs) logprobs.set(i, t.logprob);
    if (t.top.size() != top_n) fail("tokens: ", t.top.size(), " top entries, expected ", top_n);
    for (unsigned j = 0; j < top_n; ++j) {
      top_ids.set(i * top_n + j, t.top[j].token);
      top_lp.set(i * top_n + j, t.top[j].logprob);
    }
  }
  auto logits = out.initLogits(static_cast<unsigned>(step.logits.size()));
  for (unsigned i = 0; i < step.logits.size(); ++i) logits.set(i, step.logits[i]);
  auto finished = out.initFinished(static_cast<unsigned>(step.finished.size()));
  for (unsigned i = 0; i < step.finished.size(); ++i) {
    finished[i].setIndex(static_cast<std::uint32_t>(step.finished[i].first));
    finished[i].setReason(encode_finish(step.finished[i].second));
  }
  auto prompts = out.initPrompts(static_cast<unsigned>(step.prompts.size()));
  for (unsigned i = 0; i < step.prompts.size(); ++i) {
    const PromptScores& p = step.prompts[i];
    const auto m = static_cast<unsigned>(p.tokens.size());
    const unsigned k = m == 0 ? 0 : static_cast<unsigned>(p.tokens[0].top.size());
    prompts[i].setIndex(static_cast<std::uint32_t>(p.index));
    prompts[i].setTopN(k);
    auto lp = prompts[i].initLogprobs(m);
    auto ids = prompts[i].initTopIds(m * k);
    auto tlp = prompts[i].initTopLogprobs(m * k);
    for (unsigned t = 0; t < m; ++t) {
      lp.set(t, p.tokens[t].logprob);
      if (p.tokens[t].top.size() != k) {
        fail("tokens: a prompt score with ", p.tokens[t].top.size(), " top entries, expected ", k);
      }
      for (unsigned j = 0; j < k; ++j) {
        ids.set(t * k + j, p.tokens[t].top[j].token);
        tlp.set(t * k + j, p.tokens[t].top[j].logprob);
      }
    }
  }
}

JobStep decode_step(wire::Tokens::Reader in, const std::vector<std::vector<std::int32_t>>& prompts,
                    bool keep_logits, std::vector<float>& logits) {
  const std::size_t sequences = prompts.size();
  JobStep step;
  step.step = in.getStep();
  const auto tokens = in.getTokens();
  const auto indices = in.getIndices();
  const auto logprobs = in.getLogprobs();
  const unsigned top_n = in.getTopN();
  const auto top_ids = in.getTopIds();
  const auto top_lp = in.getTopLogprobs();
  const unsigned n = tokens.size();
  if (indices.size() != n) fail("tokens: ", indices.size(), " indices for ", n, " tokens");
  if (logprobs.size() != 0 && logprobs.size() != n) {
    fail("tokens: ", logprobs.size(), " logprobs for ", n, " tokens");
  }
  if (top_n > static_cast<unsigned>(kMaxLogprobs) || top_ids.size() != n * top_n ||
      top_lp.size() != n * top_n) {
    fail("tokens: top entries ", top_ids.size(), "/", top_lp.size(), " do not match ", n, " x ",
         top_n);
  }
  step.with_logprobs = logprobs.size() == n && n > 0;
  for (unsigned i = 0; i < n; ++i) {
    TokenOut t;
    t.index = indices[i];
    if (static_cast<std::size_t>(t.index) >= sequences) {
      fail("tokens: sequence ", t.index, " of a request with ", sequences);
    }
    t.token = tokens[i];
    if (step.with_logprobs) t.logprob = logprobs[i];
    for (unsigned j = 0; j < top_n; ++j)
      t.top.push_back({top_ids[i * top_n + j], top_lp[i * top_n + j]});
    step.tokens.push_back(std::move(t));
  }
  logits.clear();
  for (const float x : in.getLogits()) logits.push_back(x);
  if (keep_logits ? (n == 0 ? !logits.empty() : logits.size() % n != 0 || logits.empty())
                  : !logits.empty()) {
    fail("tokens: ", logits.size(), " logits for ", n, " tokens");
  }
  for (const auto f : in.getFinished()) {
    if (f.getIndex() >= sequences)
      fail("tokens: finished sequence ", f.getIndex(), " of ", sequences);
    step.finished.emplace_back(f.getIndex(), decode_finish(f.getReason()));
  }
  std::vector<bool> scored(prompts.size(), false);
  for (const auto p : in.getPrompts()) {
    const std::uint32_t index = p.getIndex();
    if (index >= prompts.size() || scored[index]) {
      fail("tokens: prompt scores of sequence ", index, " (", prompts.size(),
           " sequences, each scored once)");
    }
    scored[index] = true;
    const auto lp = p.getLogprobs();
    const unsigned k = p.getTopN();
    const auto ids = p.getTopIds();
    const auto tlp = p.getTopLogprobs();
    if (lp.size() + 1 != prompts[index].size()) {
      fail("tokens: ", lp.size(), " prompt scores for a prompt of ", prompts[index].size(),
           " tokens");
    }
    if (k > static_cast<unsigned>(kMaxLogprobs) || ids.size() != lp.size() * k ||
        tlp.size() != lp.size() * k) {
      fail("tokens: prompt top entries ", ids.size(), "/", tlp.size(), " do not match ", lp.size(),
           " x ", k);
    }
    PromptScores scores;
    scores.index = index;
    scores.tokens.reserve(lp.size());
    for (unsigned t = 0; t < lp.size(); ++t) {
      TokenOut out;
      out.index = index;
      out.token = prompts[index][t + 1];
      out.logprob = lp[t];
      for (unsigned j = 0; j < k; ++j) out.top.push_back({ids[t * k + j], tlp[t * k + j]});
      scores.tokens.push_back(std::move(out));
    }
    step.prompts.push_back(std::move(scores));
  }
  return step;
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
  d.setHostAttention(t.host_attention);
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
  PhaseTimes& t = result.decode_times;  // by name: PhaseTimes gains fields over time
  t.transfer = d.getTransfer();
  t.recompute = d.getRecompute();
  t.attention = d.getAttention();
  t.other = d.getOther();
  t.idle = d.getIdle();
  t.host_attention = d.getHostAttention();
  t.total = d.getTotal();
  result.recompute_tokens = in.getRecomputeTokens();
  result.transfer_tokens = in.getTransferTokens();
  result.h2d_bytes = in.getH2dBytes();
  result.d2h_bytes = in.getD2hBytes();
  result.last_plan = planner::wire_adapter::decode_plan(in.getLastPlan(), s_max);
  result.total_s = in.getTotalS();
}

}  // namespace kvpr::worker::wire_adapter
