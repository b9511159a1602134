// `kvpr batch`, the parts that touch files: the input (one JSON request per line, parsed with the
// gateway's request parser so a line means what the same body means to /v1/completions) and the
// output (one JSON result per line; what is already there is skipped on a rerun). The running
// part is batch_command.cpp.
#pragma once

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/request.h"
#include "kvpr/gateway/upstream.h"

namespace kvpr::cli {

// One prompt of the input, resolved to token ids and checked against the model.
struct BatchPrompt {
  std::int64_t index = 0;  // its 0-based line in the input
  gateway::TokenRequest request;
  std::vector<std::string> stop;  // stop strings (applied to the text, as the gateway does)
};

struct BadLine {
  std::int64_t index = 0;  // 0-based line
  std::string what;        // names the field and the value
};

struct BatchInput {
  std::vector<BatchPrompt> prompts;
  std::vector<BadLine> bad;
  std::int64_t lines = 0;
};

// What resolving a line needs of the model.
struct BatchModel {
  gateway::ModelLimits limits;           // vocab and max_positions (model: any placeholder)
  const Tokenizer* tokenizer = nullptr;  // null: text prompts and stop strings are bad lines
  std::optional<std::int32_t> bos;       // prepended to text prompts, as kvpr run does
  std::int64_t default_max_tokens = 16;  // a line without max_tokens
};

// The fields a line may carry: prompt or prompt_tokens, and the gateway's sampling fields.
// Anything else is a bad line (a typo must not silently change what runs).
BatchInput read_batch_input(const std::string& path, const BatchModel& model);

// The output file as found: the indices it already holds. A last line cut short (the job was
// killed mid-write) is removed from the file, with a note on stderr; any other line that is not
// a result of this input (not JSON, no index, an index past `lines`) is an Error naming it.
std::set<std::int64_t> resume_output(const std::string& path, std::int64_t lines);

// Appends results to the output, one line each, written and flushed at once (so a kill leaves at
// most the last line cut off), from any thread. write() throws Error when the file refuses it.
class ResultWriter {
 public:
  explicit ResultWriter(const std::string& path);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  void write(const nlohmann::json& result);

 private:
  std::string path_;
  std::FILE* file_;
  std::mutex mutex_;
};

}  // namespace kvpr::cli
