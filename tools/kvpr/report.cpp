#include "report.h"

#include <cstdio>

#include "kvpr/common/error.h"

namespace kvpr::cli {

std::unique_ptr<Tokenizer> try_load_tokenizer(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "tokenizer.json") &&
      !std::filesystem::exists(dir / "vocab.json")) {
    return nullptr;
  }
  return load_tokenizer(dir);
}

namespace {

nlohmann::json phases_json(const worker::PhaseTimes& t) {
  return {{"transfer", t.transfer},   {"recompute", t.recompute},
          {"attention", t.attention}, {"host_attention", t.host_attention},
          {"other", t.other},         {"idle", t.idle},
          {"total", t.total}};
}

}  // namespace

std::string phase_summary(const worker::GenerateResult& r) {
  const double n = r.step_s.empty() ? 1.0 : static_cast<double>(r.step_s.size());
  const auto& t = r.decode_times;
  char line[256];
  std::snprintf(line, sizeof line,
                "step %.2f ms = transfer %.2f (overlapped) | recompute %.2f attention %.2f other "
                "%.2f idle %.2f",
                1e3 * t.total / n, 1e3 * t.transfer / n, 1e3 * t.recompute / n,
                1e3 * t.attention / n, 1e3 * t.other / n, 1e3 * t.idle / n);
  return line;
}

nlohmann::json report_json(const RunReport& report) {
  const auto& r = report.result;
  nlohmann::json sequences = nlohmann::json::array();
  for (std::size_t i = 0; i < r.sequences.size(); ++i) {
    const auto& seq = r.sequences[i];
    nlohmann::json s{{"prompt_tokens", report.request.prompts[i]}, {"tokens", seq.tokens}};
    if (report.tokenizer != nullptr) s["text"] = report.tokenizer->decode(seq.tokens);
    sequences.push_back(std::move(s));
  }
  nlohmann::json out;
  out["tokens"] = r.sequences.front().tokens;
  out["text"] = sequences.front().value("text", "");
  out["policy"] = report.policy;
  out["split"] = r.last_plan.l.empty() ? 0 : r.last_plan.l.front();
  out["split_request"] = report.split_request;
  out["splits"] = r.last_plan.l;
  if (!report.host_split.empty()) out["host_split"] = report.host_split;
  out["plan_reason"] = r.last_plan.reason;
  out["sequences"] = std::move(sequences);
  out["timings"] = {{"prefill_s", r.prefill_s},
                    {"total_s", r.total_s},
                    {"decode_steps", r.step_s.size()},
                    {"decode_tokens_per_s", r.decode_tokens_per_s()},
                    {"decode_phases_s", phases_json(r.decode_times)}};
  out["kv"] = {{"recompute_tokens", r.recompute_tokens},
               {"transfer_tokens", r.transfer_tokens},
               {"host_to_device_bytes", r.h2d_bytes},
               {"device_to_host_bytes", r.d2h_bytes}};
  return out;
}

void print_report(const RunReport& report) {
  const auto& r = report.result;
  for (std::size_t i = 0; i < r.sequences.size(); ++i) {
    const auto& seq = r.sequences[i];
    std::printf("[%zu] prompt %zu tokens -> %zu new tokens:", i, report.request.prompts[i].size(),
                seq.tokens.size());
    for (auto t : seq.tokens) std::printf(" %d", t);
    std::printf("\n");
    if (report.tokenizer != nullptr) {
      std::printf("    text: %s\n",
                  nlohmann::json(report.tokenizer->decode(seq.tokens)).dump().c_str());
    }
  }
  std::printf("policy %s, split %s -> l = %s", report.policy.c_str(), report.split_request.c_str(),
              nlohmann::json(r.last_plan.l).dump().c_str());
  if (!report.host_split.empty())
    std::printf(", host from m = %s", nlohmann::json(report.host_split).dump().c_str());
  std::printf("\n");
  if (!r.last_plan.reason.empty()) std::printf("plan: %s\n", r.last_plan.reason.c_str());
  std::printf("prefill %.3f s; decode %zu steps, %.1f tokens/s\n", r.prefill_s, r.step_s.size(),
              r.decode_tokens_per_s());
  std::printf("per %s\n", phase_summary(r).c_str());
  std::printf(
      "K,V rows recomputed %lld, transferred %lld; host->device %.1f MB, device->host %.1f MB\n",
      static_cast<long long>(r.recompute_tokens), static_cast<long long>(r.transfer_tokens),
      static_cast<double>(r.h2d_bytes) / 1e6, static_cast<double>(r.d2h_bytes) / 1e6);
}

}  // namespace kvpr::cli
