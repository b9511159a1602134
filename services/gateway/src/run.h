// One request's generation as the client sees it: the upstream's token events in, OpenAI JSON out
// (a whole response, or stream chunks). Owns one SequenceText per choice; knows both APIs' shapes.
// Not thread-safe: the caller serializes the callbacks (gateway.cpp holds a lock around them).
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kvpr/common/tokenizer.h"
#include "kvpr/gateway/request.h"
#include "kvpr/gateway/text_stream.h"
#include "kvpr/gateway/upstream.h"

namespace kvpr::gateway {

// The most prompt log-probabilities (n choices x prompt tokens x (1 + top-n)) one completion with
// echo and logprobs may list: a bound on what one request makes the gateway hold and send.
inline constexpr std::int64_t kMaxPromptScoreEntries = std::int64_t{1} << 18;

// A parsed request resolved to ids: what Run needs to know.
struct Job {
  bool chat = false;
  std::string id;  // "cmpl-…" or "chatcmpl-…"
  std::int64_t created = 0;
  std::string model;
  GenerationOptions options;  // options.max_tokens is resolved
  std::vector<std::int32_t> prompt;
  std::optional<std::string> echo;  // completions with echo: the prompt's text
  bool echo_after_bos = false;      // prompt[0] is a BOS the gateway put before the echoed text
};

class Run {
 public:
  Run(Job job, const Tokenizer& tokenizer);

  const Job& job() const { return job_; }
  TokenRequest token_request() const;

  // Stream chunks (JSON objects) go to `chunks` when it is not null, each choice's led by its
  // opening chunk (chat: the assistant role; completions with echo: the prompt, with its
  // log-probabilities). on_token returns false when the sequence is done (a stop string matched,
  // or it had already finished).
  bool on_token(const TokenEvent& event, std::vector<nlohmann::json>* chunks);
  void on_finish(std::int64_t index, FinishReason reason, std::vector<nlohmann::json>* chunks);
  // The scored prompt of sequence `index` (TokenRequest::score_prompt): fills the echoed prompt's
  // log-probabilities, before its first token.
  void on_prompt(std::int64_t index, const std::vector<TokenEvent>& prompt);
  // After generate() returned: finishes sequences the upstream left open (as length) and returns
  // their last chunks, then the usage chunk when stream_options.include_usage.
  std::vector<nlohmann::json> closing_chunks();

  nlohmann::json response();  // the non-streaming reply, after generate() returned
  nlohmann::json usage() const;
  std::int64_t completion_tokens() const;

 private:
  struct Choice {
    explicit Choice(SequenceText t) : text(std::move(t)) {}
    SequenceText text;
    std::string content;  // everything emitted (non-streaming reply)
    std::optional<FinishReason> finish;
    std::int64_t tokens = 0;
    nlohmann::json logprobs;         // accumulated: completions' columns or chat's content list
    nlohmann::json prompt_logprobs;  // echo: the prompt's entries (the stream's opening chunk)
    bool opened = false;             // its opening chunk was streamed
    bool scored = false;             // prompt_logprobs hold the upstream's scores
  };

  nlohmann::json chunk(std::int64_t index, const std::string& text,
                       const std::optional<FinishReason>& finish, nlohmann::json logprobs);
  nlohmann::json token_logprobs(const TokenEvent& event, std::size_t offset) const;
  void append_logprobs(nlohmann::json& logprobs, const nlohmann::json& entry) const;
  void open(Choice& choice, std::int64_t index, std::vector<nlohmann::json>* chunks);
  void finish_choice(Choice& choice, std::int64_t index, FinishReason reason,
                     std::vector<nlohmann::json>* chunks);
  std::string token_text(std::int32_t id) const;

  Job job_;
  const Tokenizer* tokenizer_;
  std::vector<Choice> choices_;
};

std::string to_string(FinishReason reason);

}  // namespace kvpr::gateway
