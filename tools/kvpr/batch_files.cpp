// The input and output files of `kvpr batch` (batch.h). A line's sampling fields go through the
// gateway's parser (parse_completion_request) so that they are checked and defaulted exactly as a
// /v1/completions body is; what this file adds is the batch's own shape: prompt_tokens, no
// fields beyond the known ones, and the line number in every complaint.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "batch.h"
#include "kvpr/common/error.h"

namespace kvpr::cli {
namespace {

using nlohmann::json;

// The model name the parser insists on; a line does not name one.
constexpr std::string_view kModel = "batch";

constexpr std::array<std::string_view, 12> kFields = {"prompt",
                                                      "prompt_tokens",
                                                      "max_tokens",
                                                      "temperature",
                                                      "top_p",
                                                      "top_k",
                                                      "seed",
                                                      "stop",
                                                      "stop_token_ids",
                                                      "presence_penalty",
                                                      "frequency_penalty",
                                                      "ignore_eos"};

std::string known_fields() {
  std::string out;
  for (const auto field : kFields) out += str(out.empty() ? "" : ", ", field);
  return out;
}

// A short rendering of a value for a message.
std::string shown(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

std::vector<std::int32_t> prompt_token_ids(const json& ids, std::int64_t vocab) {
  if (!ids.is_array() || ids.empty()) {
    fail("'prompt_tokens' must be a non-empty array of token ids, got ", shown(ids));
  }
  std::vector<std::int32_t> out;
  out.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const json& id = ids[i];
    if (!id.is_number_integer()) {
      fail("'prompt_tokens'[", i, "] must be a token id, got ", shown(id));
    }
    const auto value = id.get<std::int64_t>();
    if (value < 0 || value >= vocab) {
      fail("'prompt_tokens'[", i, "] = ", value, " is outside the vocabulary [0, ", vocab, ")");
    }
    out.push_back(static_cast<std::int32_t>(value));
  }
  return out;
}

// One line to a prompt; throws Error (or the parser's ApiError) naming what is wrong.
BatchPrompt parse_line(const std::string& line, std::int64_t index, const BatchModel& model) {
  json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) fail("not valid JSON");
  if (!object.is_object()) fail("not a JSON object: ", shown(object));
  for (const auto& [key, value] : object.items()) {
    if (std::find(kFields.begin(), kFields.end(), key) == kFields.end()) {
      fail("unknown field '", key, "' (a line takes ", known_fields(), ")");
    }
  }
  const bool has_text = object.contains("prompt");
  const bool has_tokens = object.contains("prompt_tokens");
  if (has_text == has_tokens) fail("a line needs exactly one of 'prompt' and 'prompt_tokens'");

  BatchPrompt prompt;
  prompt.index = index;
  std::vector<std::int32_t>& ids = prompt.request.prompt;
  if (has_tokens) {
    ids = prompt_token_ids(object["prompt_tokens"], model.limits.vocab);
    object.erase("prompt_tokens");
    object["prompt"] = ids;
  } else if (!object["prompt"].is_string()) {
    fail("'prompt' must be a string (token ids go in 'prompt_tokens'), got ",
         shown(object["prompt"]));
  }
  object["model"] = kModel;
  gateway::ModelLimits limits = model.limits;
  limits.model = kModel;
  gateway::CompletionRequest request = gateway::parse_completion_request(object.dump(), limits);
  if (request.prompt_text) {
    if (model.tokenizer == nullptr) fail("a text 'prompt' needs the checkpoint's tokenizer");
    if (model.bos) ids.push_back(*model.bos);
    const auto encoded = model.tokenizer->encode(*request.prompt_text);
    ids.insert(ids.end(), encoded.begin(), encoded.end());
  }
  gateway::GenerationOptions& options = request.options;
  if (!options.stop.empty() && model.tokenizer == nullptr) {
    fail("'stop' strings need the checkpoint's tokenizer");
  }
  if (!options.max_tokens) options.max_tokens = model.default_max_tokens;
  prompt.request.max_tokens = gateway::resolve_max_tokens(
      options, static_cast<std::int64_t>(ids.size()), /*is_chat=*/false, limits);
  prompt.request.sampling = options.sampling;
  prompt.stop = std::move(options.stop);
  return prompt;
}

}  // namespace

BatchInput read_batch_input(const std::string& path, const BatchModel& model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--input: cannot read '", path, "'");
  BatchInput input;
  std::string line;
  for (std::int64_t index = 0; std::getline(in, line); ++index) {
    input.lines = index + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    try {
      if (line.find_first_not_of(" \t") == std::string::npos) fail("an empty line");
      input.prompts.push_back(parse_line(line, index, model));
    } catch (const gateway::ApiError& e) {
      input.bad.push_back({index, e.what()});
    } catch (const Error& e) {
      input.bad.push_back({index, e.what()});
    }
  }
  if (in.bad()) fail("--input: error reading '", path, "'");
  return input;
}

std::set<std::int64_t> resume_output(const std::string& path, std::int64_t lines) {
  std::set<std::int64_t> done;
  if (!std::filesystem::exists(path)) return done;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--output: cannot read '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t pos = 0;
  for (std::int64_t number = 1; pos < text.size(); ++number) {
    const std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      // Written in one piece with its newline, so a line without one was cut off by a kill.
      std::fprintf(stderr,
                   "kvpr batch: %s: removed a cut-off last line (%zu bytes) left by an "
                   "interrupted run; its prompt runs again\n",
                   path.c_str(), text.size() - pos);
      std::filesystem::resize_file(path, pos);
      break;
    }
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json result = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const json* index = result.is_object() && result.contains("index") ? &result["index"] : nullptr;
    if (index == nullptr || !index->is_number_integer() || index->get<std::int64_t>() < 0 ||
        index->get<std::int64_t>() >= lines) {
      fail("--output: line ", number, " of '", path,
           "' is not a result of this input (a JSON object whose 'index' is in [0, ", lines,
           ")); give another --output, or remove the file to start over");
    }
    done.insert(index->get<std::int64_t>());
  }
  return done;
}

ResultWriter::ResultWriter(const std::string& path)
    : path_(path), file_(std::fopen(path.c_str(), "ab")) {
  if (file_ == nullptr) fail("--output: cannot open '", path, "' for appending");
}

ResultWriter::~ResultWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void ResultWriter::write(const json& result) {
  const std::string line = result.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  std::lock_guard lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    fail("--output: cannot write to '", path_, "'");
  }
}

}  // namespace kvpr::cli
