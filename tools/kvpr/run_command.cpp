// `kvpr run`: prompts in, greedy tokens out, through the embedded services.
#include <charconv>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "embedded.h"
#include "kvpr/common/error.h"
#include "kvpr/common/npy.h"
#include "kvpr/common/tokenizer.h"
#include "kvpr/worker/generator.h"
#include "report.h"

namespace kvpr::cli {
namespace {

std::vector<std::int32_t> parse_tokens(const std::string& list, std::int64_t vocab) {
  std::vector<std::int32_t> ids;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const auto comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    std::int64_t id = -1;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size()) {
      fail("--prompt-tokens: '", item, "' is not a token id (in '", list, "')");
    }
    if (id < 0 || id >= vocab)
      fail("--prompt-tokens: token id ", id, " is outside the vocabulary [0, ", vocab, ")");
    ids.push_back(static_cast<std::int32_t>(id));
    pos = comma + 1;
  }
  return ids;
}

}  // namespace

int run_command(const RunOptions& options) {
  if (options.prompts.empty() && options.prompt_tokens.empty()) {
    fail("kvpr run needs --prompt TEXT or --prompt-tokens IDS");
  }
  if (options.max_new_tokens < 1)
    fail("--max-new-tokens must be at least 1, got ", options.max_new_tokens);
  const auto policy = planner::parse_policy(options.policy);
  const auto split = parse_split(options.split);
  Embedded e(options.model, options.backend, policy, split, options.capacity_bytes, !options.quiet,
             options.planner);
  const ModelConfig& c = e.checkpoint.config();

  std::unique_ptr<Tokenizer> tokenizer;
  worker::GenerateRequest request;
  request.max_new_tokens = options.max_new_tokens;
  request.keep_logits = !options.logits_out.empty();
  if (!options.prompts.empty()) {
    tokenizer = load_tokenizer(options.model);
    for (const auto& text : options.prompts) {
      std::vector<std::int32_t> ids;
      if (c.bos_token_id >= 0) ids.push_back(c.bos_token_id);
      for (auto id : tokenizer->encode(text)) ids.push_back(id);
      request.prompts.push_back(std::move(ids));
    }
  } else {
    for (const auto& list : options.prompt_tokens)
      request.prompts.push_back(parse_tokens(list, c.vocab));
    if (auto loaded = try_load_tokenizer(options.model)) tokenizer = std::move(loaded);
  }

  Progress progress("generating", static_cast<std::uint64_t>(options.max_new_tokens - 1),
                    !options.quiet);
  const auto result = worker::generate(*e.engine, request, [&](std::int64_t step, std::int64_t) {
    progress.update(static_cast<std::uint64_t>(step));
  });
  progress.finish();

  if (!options.logits_out.empty()) {
    std::vector<float> all;
    for (const auto& seq : result.sequences)
      all.insert(all.end(), seq.logits.begin(), seq.logits.end());
    std::vector<std::int64_t> shape{options.max_new_tokens, c.vocab};
    if (result.sequences.size() > 1)
      shape.insert(shape.begin(), static_cast<std::int64_t>(result.sequences.size()));
    write_npy_f32(options.logits_out, shape, all.data());
  }
  RunReport report{options.policy, options.split, request, result, tokenizer.get()};
  if (options.json) {
    std::printf("%s\n", report_json(report).dump().c_str());
  } else {
    print_report(report);
  }
  return 0;
}

}  // namespace kvpr::cli
