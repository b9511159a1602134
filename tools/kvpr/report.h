// How `kvpr run` and `kvpr demo` show a generation: a human-readable summary or one JSON object.
#pragma once

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "kvpr/common/progress.h"
#include "kvpr/common/tokenizer.h"
#include "kvpr/worker/generator.h"

namespace kvpr::cli {

struct RunReport {
  std::string policy;
  std::string split_request;
  const worker::GenerateRequest& request;
  const worker::GenerateResult& result;
  const Tokenizer* tokenizer;  // may be null: no text then
  // M per sequence of the last step (m = s: nothing on the host); empty when not known (--connect).
  std::vector<std::int64_t> host_split = {};
};

nlohmann::json report_json(const RunReport& report);
void print_report(const RunReport& report);
// Mean per-step milliseconds of each phase, e.g. "transfer 1.2 recompute 0.4 ...".
std::string phase_summary(const worker::GenerateResult& result);
// A tokenizer when the checkpoint has one, else null (token-id runs need none).
std::unique_ptr<Tokenizer> try_load_tokenizer(const std::filesystem::path& dir);

}  // namespace kvpr::cli
