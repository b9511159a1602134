#include "kvpr/gateway/chat_template.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "kvpr/common/error.h"

namespace kvpr::gateway {
namespace {

std::string strip(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const std::size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  const std::size_t end = text.find_last_not_of(kSpace);
  return std::string(text.substr(begin, end - begin + 1));
}

void append(std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& more) {
  ids.insert(ids.end(), more.begin(), more.end());
}

std::string_view role_name(ChatMessage::Role role) {
  switch (role) {
    case ChatMessage::Role::system:
      return "system";
    case ChatMessage::Role::assistant:
      return "assistant";
    default:
      return "user";
  }
}

std::vector<std::int32_t> plain(const std::vector<ChatMessage>& messages,
                                const Tokenizer& tokenizer, bool add_bos) {
  std::string text;
  for (const ChatMessage& m : messages) text += str(role_name(m.role), ": ", m.content, "\n");
  text += "assistant:";
  std::vector<std::int32_t> ids;
  if (add_bos && tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
  append(ids, tokenizer.encode(text));
  return ids;
}

std::vector<std::int32_t> llama2(const std::vector<ChatMessage>& messages,
                                 const Tokenizer& tokenizer) {
  std::string system;
  for (const ChatMessage& m : messages) {
    if (m.role != ChatMessage::Role::system) continue;
    system += (system.empty() ? "" : "\n\n") + strip(m.content);
  }
  std::vector<std::int32_t> ids;
  bool first_user = true;
  std::string pending;  // text since the last special id, encoded in one piece
  const auto flush = [&] {
    if (!pending.empty()) append(ids, tokenizer.encode(pending));
    pending.clear();
  };
  for (const ChatMessage& m : messages) {
    if (m.role == ChatMessage::Role::user) {
      flush();
      if (tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
      pending = "[INST] ";
      if (first_user && !system.empty()) pending += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
      pending += strip(m.content) + " [/INST]";
      first_user = false;
    } else if (m.role == ChatMessage::Role::assistant) {
      pending += " " + strip(m.content) + " ";
      flush();
      if (tokenizer.eos_id()) ids.push_back(*tokenizer.eos_id());
    }
  }
  if (first_user && !system.empty()) {  // only system messages: one turn holding them
    if (tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
    pending = "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n [/INST]";
  }
  flush();
  return ids;
}

}  // namespace

ChatFormat chat_format_of(const std::string& chat_template) {
  return chat_template.find("[INST]") != std::string::npos ? ChatFormat::llama2 : ChatFormat::plain;
}

ChatFormat load_chat_format(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return ChatFormat::plain;
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
  if (!config.is_object()) return ChatFormat::plain;
  const auto it = config.find("chat_template");
  if (it == config.end()) return ChatFormat::plain;
  // A list of named templates ({"name": "default", "template": ...}) also exists; any that
  // mentions [INST] makes it LLaMA-2.
  return chat_format_of(it->is_string() ? it->get<std::string>() : it->dump());
}

std::vector<std::int32_t> apply_chat_template(ChatFormat format,
                                              const std::vector<ChatMessage>& messages,
                                              const Tokenizer& tokenizer, bool add_bos) {
  return format == ChatFormat::llama2 ? llama2(messages, tokenizer)
                                      : plain(messages, tokenizer, add_bos);
}

}  // namespace kvpr::gateway
