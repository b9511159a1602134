// Chat messages → prompt token ids. kvpr does not run Jinja: it recognises the one template family
// it serves and falls back to a plain format for everything else.
//
//  * llama2 — chosen when tokenizer_config.json's `chat_template` contains "[INST]" (LLaMA-2 chat
//    and its fine-tunes). Formatted as Meta's reference does, BOS/EOS as ids (never as text):
//      <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user}
//      [/INST]
//    System messages (joined by a blank line) go into the first user turn; contents are stripped
//    of surrounding whitespace.
//  * plain — every other template, or none (base models such as OPT): one line per message,
//      system: {content}\nuser: {content}\nassistant: {content}\nassistant:
//    after BOS when the tokenizer has one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/request.h"

namespace kvpr::gateway {

enum class ChatFormat { plain, llama2 };

// The format a `chat_template` string stands for (empty: plain).
ChatFormat chat_format_of(const std::string& chat_template);
// The format of a checkpoint: DIR/tokenizer_config.json's chat_template; plain when the file or
// the field is absent. Throws Error(failed) when the file exists but is not valid JSON.
ChatFormat load_chat_format(const std::filesystem::path& dir);

// The prompt's token ids. `add_bos`: plain format starts with the tokenizer's BOS (llama2 always
// puts BOS before each user turn, when the tokenizer has one).
std::vector<std::int32_t> apply_chat_template(ChatFormat format,
                                              const std::vector<ChatMessage>& messages,
                                              const Tokenizer& tokenizer, bool add_bos = true);

}  // namespace kvpr::gateway
