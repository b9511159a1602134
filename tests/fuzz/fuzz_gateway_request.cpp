// libFuzzer target: the gateway's request parsers, which every byte an HTTP client sends reaches
// first. Any input must end in a parsed request or an ApiError — never a crash, hang or leak. A
// parsed request is taken on through the checks that follow parsing (the prompt-length check,
// and the chat template over a tokenizer-free stand-in), so their arithmetic is fuzzed too.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvpr/gateway/chat_template.h"
#include "kvpr/gateway/request.h"

namespace {

// Encodes each byte as one id: enough for the template's arithmetic, and no file to load.
class ByteTokenizer : public kvpr::Tokenizer {
 public:
  std::vector<std::int32_t> encode(std::string_view text) const override {
    return {text.begin(), text.end()};
  }
  std::string decode(const std::vector<std::int32_t>& ids) const override {
    return {ids.begin(), ids.end()};
  }
  std::int64_t vocab_size() const override { return 256; }
  std::optional<std::int32_t> bos_id() const override { return 1; }
  std::optional<std::int32_t> eos_id() const override { return 2; }
};

}  // namespace

// NOLINTNEXTLINE(readability-identifier-naming): the name libFuzzer calls
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvpr::gateway;
  const ModelLimits limits{"test-model", 256, 512};
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  // The first byte picks the API, so one corpus reaches both parsers.
  const bool chat = size > 0 && (data[0] & 1U) != 0;
  try {
    if (chat) {
      const ChatRequest request = parse_chat_request(body, limits);
      static const ByteTokenizer tokenizer;
      for (const ChatFormat format : {ChatFormat::plain, ChatFormat::llama2}) {
        const auto ids = apply_chat_template(format, request.messages, tokenizer);
        (void)resolve_max_tokens(request.options, static_cast<std::int64_t>(ids.size()), true,
                                 limits);
      }
    } else {
      const CompletionRequest request = parse_completion_request(body, limits);
      const auto n = request.prompt_text ? static_cast<std::int64_t>(request.prompt_text->size())
                                         : static_cast<std::int64_t>(request.prompt_tokens.size());
      (void)resolve_max_tokens(request.options, n, false, limits);
    }
  } catch (const ApiError& e) {
    (void)e.body();
  }
  return 0;
}
