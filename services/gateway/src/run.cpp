#include "run.h"

#include <unordered_set>

namespace kvpr::gateway {

using nlohmann::json;

std::string to_string(FinishReason reason) {
  return reason == FinishReason::stop ? "stop" : "length";
}

namespace {

json bytes_of(const std::string& text) {
  json bytes = json::array();
  for (const char c : text) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

json empty_logprobs(bool chat) {
  if (chat) return json{{"content", json::array()}};
  return json{{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
}

}  // namespace

Run::Run(Job job, const Tokenizer& tokenizer) : job_(std::move(job)), tokenizer_(&tokenizer) {
  std::unordered_set<std::int32_t> skip(job_.options.sampling.stop_token_ids.begin(),
                                        job_.options.sampling.stop_token_ids.end());
  if (tokenizer.bos_id()) skip.insert(*tokenizer.bos_id());
  if (tokenizer.eos_id()) skip.insert(*tokenizer.eos_id());
  // With echo and logprobs, the echoed prompt's entries: null log-probabilities until the
  // upstream scores the prompt (on_prompt), and always for the first token, which nothing
  // predicts (as OpenAI lists it). Offsets are into the echoed text, where a BOS the gateway
  // added takes no room.
  json logprobs;
  if (job_.options.sampling.logprobs >= 0) logprobs = empty_logprobs(job_.chat);
  if (job_.echo && !logprobs.is_null()) {
    std::size_t offset = 0;
    for (std::size_t t = 0; t < job_.prompt.size(); ++t) {
      const std::string text = token_text(job_.prompt[t]);
      logprobs["tokens"].push_back(text);
      logprobs["token_logprobs"].push_back(nullptr);
      logprobs["top_logprobs"].push_back(nullptr);
      logprobs["text_offset"].push_back(std::min(offset, job_.echo->size()));
      if (t > 0 || !job_.echo_after_bos) offset += text.size();
    }
  }
  choices_.reserve(static_cast<std::size_t>(job_.options.n));
  for (std::int64_t i = 0; i < job_.options.n; ++i) {
    choices_.emplace_back(SequenceText(tokenizer, skip, job_.options.stop));
    Choice& choice = choices_.back();
    choice.logprobs = logprobs;
    if (!job_.echo) continue;
    choice.content = *job_.echo;
    choice.prompt_logprobs = logprobs;
  }
}

// Every choice shares the prompt: the upstream scores it once (for any index) and each choice
// not yet under way takes the scores.
void Run::on_prompt(std::int64_t index, const std::vector<TokenEvent>& prompt) {
  if (!job_.echo || job_.options.sampling.logprobs < 0) return;
  if (index < 0 || index >= job_.options.n || prompt.size() + 1 != job_.prompt.size()) return;
  for (Choice& choice : choices_) {
    if (choice.tokens > 0 || choice.opened || choice.scored) continue;
    choice.scored = true;
    json& lp = choice.prompt_logprobs;
    for (std::size_t t = 0; t < prompt.size(); ++t) {
      json entry = token_logprobs(prompt[t], 0);  // the generated tokens' shape of an entry
      lp["token_logprobs"][t + 1] = std::move(entry["logprob"]);
      lp["top_logprobs"][t + 1] = std::move(entry["top"]);
    }
    choice.logprobs = lp;
  }
}

TokenRequest Run::token_request() const {
  TokenRequest request;
  request.prompt = job_.prompt;
  request.n = job_.options.n;
  request.max_tokens = *job_.options.max_tokens;
  request.sampling = job_.options.sampling;
  request.score_prompt = job_.echo.has_value() && job_.options.sampling.logprobs >= 0;
  return request;
}

std::string Run::token_text(std::int32_t id) const {
  return tokenizer_->decode({id});
}

json Run::chunk(std::int64_t index, const std::string& text,
                const std::optional<FinishReason>& finish, json logprobs) {
  json choice = {{"index", index}};
  if (job_.chat) {
    choice["delta"] = text.empty() ? json::object() : json{{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish ? json(to_string(*finish)) : json();
  json out = {{"id", job_.id},
              {"object", job_.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", job_.created},
              {"model", job_.model},
              {"choices", json::array({std::move(choice)})}};
  if (job_.options.include_usage) out["usage"] = nullptr;
  return out;
}

json Run::token_logprobs(const TokenEvent& event, std::size_t offset) const {
  if (job_.chat) {
    const std::string text = token_text(event.token);
    json top = json::array();
    for (const auto& [id, logprob] : event.top) {
      const std::string t = token_text(id);
      top.push_back({{"token", t}, {"logprob", logprob}, {"bytes", bytes_of(t)}});
    }
    return {{"token", text},
            {"logprob", event.logprob},
            {"bytes", bytes_of(text)},
            {"top_logprobs", std::move(top)}};
  }
  json top = json::object();
  for (const auto& [id, logprob] : event.top) top[token_text(id)] = logprob;
  return {{"token", token_text(event.token)},
          {"logprob", event.logprob},
          {"top", std::move(top)},
          {"offset", offset}};
}

// One token's entry into a logprobs object of the API's shape (accumulated or a chunk's own).
void Run::append_logprobs(json& logprobs, const json& entry) const {
  if (job_.chat) {
    logprobs["content"].push_back(entry);
    return;
  }
  logprobs["tokens"].push_back(entry["token"]);
  logprobs["token_logprobs"].push_back(entry["logprob"]);
  logprobs["top_logprobs"].push_back(entry["top"]);
  logprobs["text_offset"].push_back(entry["offset"]);
}

bool Run::on_token(const TokenEvent& event, std::vector<json>* chunks) {
  if (event.index < 0 || event.index >= job_.options.n) return false;
  Choice& choice = choices_[static_cast<std::size_t>(event.index)];
  if (choice.finish) return false;
  open(choice, event.index, chunks);
  ++choice.tokens;
  const std::size_t offset = choice.content.size();
  StopMatcher::Result result = choice.text.push(event.token);
  choice.content += result.text;
  json logprobs;
  if (job_.options.sampling.logprobs >= 0) {
    const json entry = token_logprobs(event, offset);
    append_logprobs(choice.logprobs, entry);
    if (chunks != nullptr) {
      logprobs = empty_logprobs(job_.chat);
      append_logprobs(logprobs, entry);
    }
  }
  if (result.stopped) choice.finish = FinishReason::stop;
  if (chunks != nullptr && (!result.text.empty() || !logprobs.is_null() || choice.finish)) {
    chunks->push_back(chunk(event.index, result.text, choice.finish, std::move(logprobs)));
  }
  return !result.stopped;
}

void Run::finish_choice(Choice& choice, std::int64_t index, FinishReason reason,
                        std::vector<json>* chunks) {
  if (choice.finish) return;
  open(choice, index, chunks);
  choice.finish = reason;
  const std::string rest = choice.text.finish();
  choice.content += rest;
  if (chunks != nullptr) chunks->push_back(chunk(index, rest, reason, nullptr));
}

void Run::on_finish(std::int64_t index, FinishReason reason, std::vector<json>* chunks) {
  if (index < 0 || index >= job_.options.n) return;
  finish_choice(choices_[static_cast<std::size_t>(index)], index, reason, chunks);
}

void Run::open(Choice& choice, std::int64_t index, std::vector<json>* chunks) {
  if (chunks == nullptr || choice.opened) return;
  choice.opened = true;
  if (job_.chat) {
    json first = chunk(index, "", std::nullopt, nullptr);
    first["choices"][0]["delta"] = {{"role", "assistant"}, {"content", ""}};
    chunks->push_back(std::move(first));
  } else if (job_.echo) {
    chunks->push_back(chunk(index, *job_.echo, std::nullopt, choice.prompt_logprobs));
  }
}

std::vector<json> Run::closing_chunks() {
  std::vector<json> chunks;
  for (std::size_t i = 0; i < choices_.size(); ++i) {
    finish_choice(choices_[i], static_cast<std::int64_t>(i), FinishReason::length, &chunks);
  }
  if (job_.options.include_usage) {
    json last = chunk(0, "", std::nullopt, nullptr);
    last["choices"] = json::array();
    last["usage"] = usage();
    chunks.push_back(std::move(last));
  }
  return chunks;
}

std::int64_t Run::completion_tokens() const {
  std::int64_t total = 0;
  for (const Choice& choice : choices_) total += choice.tokens;
  return total;
}

json Run::usage() const {
  const auto prompt = static_cast<std::int64_t>(job_.prompt.size());
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion_tokens()},
          {"total_tokens", prompt + completion_tokens()}};
}

json Run::response() {
  json choices = json::array();
  for (std::size_t i = 0; i < choices_.size(); ++i) {
    Choice& c = choices_[i];
    finish_choice(c, static_cast<std::int64_t>(i), FinishReason::length, nullptr);
    json choice = {{"index", i}};
    if (job_.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.content}};
    } else {
      choice["text"] = c.content;
    }
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = to_string(*c.finish);
    choices.push_back(std::move(choice));
  }
  return {{"id", job_.id},
          {"object", job_.chat ? "chat.completion" : "text_completion"},
          {"created", job_.created},
          {"model", job_.model},
          {"choices", std::move(choices)},
          {"usage", usage()}};
}

}  // namespace kvpr::gateway
