// The two generation routes. A plain request runs the upstream's generate() on its HTTP thread and
// answers once. A streamed one runs generate() on a producer thread that turns token events into
// SSE frames on a queue; the HTTP thread waits for the first frame (so that an error before any
// token is still a plain 4xx/5xx reply), then its chunked content provider writes frames as they
// come. When a write fails (the client went away) the stream is cancelled: every later on_token
// returns false, the upstream stops the sequences, and the response's releaser joins the producer.
#include <chrono>
#include <deque>
#include <exception>
#include <optional>
#include <sstream>
#include <utility>

#include "gateway_impl.h"
#include "kvpr/common/log.h"
#include "run.h"

namespace kvpr::gateway {

using nlohmann::json;

namespace {

constexpr auto kProviderWait = std::chrono::milliseconds(500);

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string frame(const json& value) {
  return "data: " + dump(value) + "\n\n";
}

// Times tokens for the TTFT and inter-token histograms.
class TokenClock {
 public:
  TokenClock(GatewayMetrics& metrics, Clock::time_point start, std::int64_t n)
      : metrics_(&metrics), start_(start), last_(static_cast<std::size_t>(n)) {}

  void tick(std::int64_t index) {
    const auto now = Clock::now();
    if (!first_) metrics_->time_to_first_token().Observe(seconds(now - start_));
    first_ = true;
    if (index < 0 || static_cast<std::size_t>(index) >= last_.size()) return;
    auto& last = last_[static_cast<std::size_t>(index)];
    if (last) metrics_->inter_token_latency().Observe(seconds(now - *last));
    last = now;
  }

 private:
  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
  GatewayMetrics* metrics_;
  Clock::time_point start_;
  bool first_ = false;
  std::vector<std::optional<Clock::time_point>> last_;
};

// The state a stream's HTTP thread, producer thread and response releaser share.
struct Stream {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> frames;
  bool opened = false;            // the first chunk was queued: errors now travel in the stream
  bool done = false;              // the last frame ([DONE]) is queued
  std::optional<ApiError> error;  // generate() failed before the stream opened
  std::atomic<bool> cancelled{false};
  std::thread producer;
};

}  // namespace

Job Gateway::Impl::make_job(const std::string& body, bool chat) {
  Job job;
  job.chat = chat;
  const std::uint64_t serial = next_id_.fetch_add(1);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  job.created = std::chrono::duration_cast<std::chrono::seconds>(now).count();
  const auto nanos =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
  std::ostringstream id;
  id << (chat ? "chatcmpl-" : "cmpl-") << std::hex << nanos << serial;
  job.id = id.str();
  job.model = options_.model_name;
  if (chat) {
    ChatRequest request = parse_chat_request(body, limits_);
    job.options = std::move(request.options);
    job.prompt =
        apply_chat_template(options_.chat_format, request.messages, *tokenizer_, options_.add_bos);
  } else {
    CompletionRequest request = parse_completion_request(body, limits_);
    job.options = std::move(request.options);
    if (request.prompt_text) {
      if (options_.add_bos && tokenizer_->bos_id()) job.prompt.push_back(*tokenizer_->bos_id());
      const std::vector<std::int32_t> ids = tokenizer_->encode(*request.prompt_text);
      job.prompt.insert(job.prompt.end(), ids.begin(), ids.end());
      if (request.echo) job.echo = *request.prompt_text;
      job.echo_after_bos = options_.add_bos && tokenizer_->bos_id().has_value();
    } else {
      job.prompt = std::move(request.prompt_tokens);
      if (request.echo) job.echo = tokenizer_->decode(job.prompt);
    }
  }
  job.options.max_tokens =
      resolve_max_tokens(job.options, static_cast<std::int64_t>(job.prompt.size()), chat, limits_);
  if (job.echo && job.options.sampling.logprobs >= 0) {  // what the scored prompt makes us hold
    const auto entries = job.options.n * static_cast<std::int64_t>(job.prompt.size()) *
                         (job.options.sampling.logprobs + 1);
    if (entries > kMaxPromptScoreEntries) {
      throw ApiError(400,
                     str("echo with logprobs ", job.options.sampling.logprobs, " over a prompt of ",
                         job.prompt.size(), " tokens for n ", job.options.n, " choices lists ",
                         entries, " log-probabilities; at most ", kMaxPromptScoreEntries),
                     "logprobs");
    }
  }
  return job;
}

void Gateway::Impl::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const auto start = Clock::now();
  if (stopping_) {
    res.set_header("Retry-After", "1");
    reply_error(res,
                ApiError(503, "the server is shutting down", "", "server_error", "shutting_down"));
    return;
  }
  auto in_flight = std::make_shared<InFlight>(*this);
  Job job;
  try {
    job = make_job(req.body, chat);
  } catch (const ApiError& e) {
    reply_error(res, e);
    return;
  } catch (const Error& e) {  // the tokenizer refused the text
    reply_error(res, ApiError(400, e.what(), chat ? "messages" : "prompt"));
    return;
  }
  auto run = std::make_shared<Run>(std::move(job), *tokenizer_);
  auto clock = std::make_shared<TokenClock>(metrics_, start, run->job().options.n);
  const auto failure = [](const std::exception_ptr& ep) -> ApiError {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      return e;
    } catch (const Error& e) {
      return upstream_error(e);
    } catch (const std::exception& e) {
      return {500, str("internal error: ", e.what()), "", "server_error"};
    }
  };

  if (!run->job().options.stream) {
    std::mutex mutex;
    std::exception_ptr error;
    UpstreamCallbacks callbacks;
    callbacks.on_token = [&](const TokenEvent& event) {
      const std::scoped_lock lock(mutex);
      clock->tick(event.index);
      try {
        return !error && run->on_token(event, nullptr);
      } catch (...) {
        error = std::current_exception();
        return false;
      }
    };
    callbacks.on_finish = [&](std::int64_t index, FinishReason reason) {
      const std::scoped_lock lock(mutex);
      if (!error) run->on_finish(index, reason, nullptr);
    };
    callbacks.on_prompt = [&](std::int64_t index, const std::vector<TokenEvent>& prompt) {
      const std::scoped_lock lock(mutex);
      if (!error) run->on_prompt(index, prompt);
    };
    try {
      upstream_->generate(with_deadline(run->token_request()), callbacks);
    } catch (...) {
      error = std::current_exception();
    }
    if (error) {
      const ApiError api = failure(error);
      if (api.status() == 503) res.set_header("Retry-After", "1");
      reply_error(res, api);
      return;
    }
    res.set_content(dump(run->response()), "application/json");
    metrics_.request_latency().Observe(std::chrono::duration<double>(Clock::now() - start).count());
    return;
  }

  auto stream = std::make_shared<Stream>();
  stream->producer = std::thread([this, stream, run, clock, failure] {
    const auto queue = [&](const std::vector<json>& chunks) {  // call with stream->mutex held
      if (!chunks.empty()) stream->opened = true;
      for (const json& c : chunks) stream->frames.push_back(frame(c));
      stream->cv.notify_all();
    };
    std::exception_ptr error;
    UpstreamCallbacks callbacks;
    callbacks.on_token = [&](const TokenEvent& event) {
      const std::scoped_lock lock(stream->mutex);
      if (stream->cancelled || error) return false;
      clock->tick(event.index);
      try {
        std::vector<json> chunks;
        const bool more = run->on_token(event, &chunks);
        if (!chunks.empty()) queue(chunks);
        return more && !stream->cancelled;
      } catch (...) {
        error = std::current_exception();
        return false;
      }
    };
    callbacks.on_prompt = [&](std::int64_t index, const std::vector<TokenEvent>& prompt) {
      const std::scoped_lock lock(stream->mutex);
      if (!error) run->on_prompt(index, prompt);
    };
    callbacks.on_finish = [&](std::int64_t index, FinishReason reason) {
      const std::scoped_lock lock(stream->mutex);
      if (error) return;
      std::vector<json> chunks;
      run->on_finish(index, reason, &chunks);
      queue(chunks);
    };
    try {
      upstream_->generate(with_deadline(run->token_request()), callbacks);
    } catch (...) {
      error = std::current_exception();
    }
    const std::scoped_lock lock(stream->mutex);
    if (error && !stream->opened) {
      stream->error = failure(error);
    } else if (error) {
      const ApiError api = failure(error);
      log::warn("gateway: stream ", run->job().id, " failed: ", api.what());
      stream->frames.push_back("data: " + api.body() + "\n\n");
    } else {
      queue(run->closing_chunks());
    }
    if (!stream->error) stream->frames.emplace_back("data: [DONE]\n\n");
    stream->done = true;
    stream->cv.notify_all();
  });

  {
    std::unique_lock lock(stream->mutex);
    stream->cv.wait(lock, [&] { return !stream->frames.empty() || stream->done; });
    if (stream->error) {
      lock.unlock();
      stream->producer.join();
      if (stream->error->status() == 503) res.set_header("Retry-After", "1");
      reply_error(res, *stream->error);
      return;
    }
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream](std::size_t, httplib::DataSink& sink) {
        std::deque<std::string> frames;
        bool done = false;
        {
          std::unique_lock lock(stream->mutex);
          stream->cv.wait_for(lock, kProviderWait,
                              [&] { return !stream->frames.empty() || stream->done; });
          frames.swap(stream->frames);
          done = stream->done;
        }
        for (const std::string& f : frames) {
          if (!sink.is_writable() || !sink.write(f.data(), f.size())) {
            stream->cancelled = true;
            return false;
          }
        }
        if (done) sink.done();
        return true;
      },
      [this, stream, in_flight, start](bool success) {
        if (!success) stream->cancelled = true;
        stream->producer.join();
        metrics_.request_latency().Observe(
            std::chrono::duration<double>(Clock::now() - start).count());
      });
}

}  // namespace kvpr::gateway
