// The worker service over real ZeroMQ sockets (tcp loopback), on the in-process store and planner:
// results equal an in-process generate() bit for bit; bad wire input is answered, counted and
// survived; deadlines, drain on stop, and a silent worker never hangs a client.
#include "kvpr/worker/worker_service.h"

#include <capnp/message.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <chrono>
#include <thread>
#include <zmq.hpp>

#include "../slowdown.h"
#include "kvpr/common/error.h"
#include "kvpr/net/rpc.h"
#include "kvpr/worker/generator.h"
#include "kvpr/worker/worker_client.h"
#include "schemas/worker.capnp.h"
#include "stack.h"
#include "worker_wire.h"

namespace kvpr::worker {
namespace {

using std::chrono::milliseconds;

const std::string kModel = std::string(KVPR_TEST_DATA) + "/golden/models/opt-2l-h64";

struct Served {
  explicit Served(WorkerServiceOptions options = {})
      : stack(kModel, planner::Policy::kvpr, std::nullopt),
        service(context, *stack.model, *stack.backend, *stack.store, stack.planner,
                std::move(options)) {
    service.start();
  }
  testing::Stack stack;
  zmq::context_t context;
  WorkerService service;
};

RemoteGenerate request(std::vector<std::vector<std::int32_t>> prompts, std::int64_t n) {
  RemoteGenerate r;
  r.request.prompts = std::move(prompts);
  r.request.max_new_tokens = n;
  r.request.keep_logits = true;
  r.policy = planner::Policy::kvpr;
  r.split = 3;
  r.sampling.ignore_eos = true;
  return r;
}

TEST(WorkerService, MatchesInProcessGenerateBitForBit) {
  Served served;
  WorkerClient client(served.context, served.service.endpoint());
  const auto work = request({{2, 31, 45, 60, 7}, {2, 9}}, 6);
  std::vector<std::int64_t> steps;
  StreamCallbacks callbacks;
  callbacks.on_step = [&](const JobStep& e) { steps.push_back(e.step); };
  const auto remote = client.generate(work, callbacks);
  EXPECT_EQ(steps, (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5}));

  testing::Stack local(kModel, planner::Policy::kvpr, 3);
  const auto expected = generate(*local.engine, work.request);
  ASSERT_EQ(remote.sequences.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(remote.sequences[i].tokens, expected.sequences[i].tokens);
    EXPECT_EQ(remote.sequences[i].logits, expected.sequences[i].logits);  // exact
  }
  EXPECT_EQ(remote.step_s.size(), 5u);
  // Every phase survives the wire by name: the step total is the sum of the steps' times.
  double steps_s = 0;
  for (const double s : remote.step_s) steps_s += s;
  EXPECT_GT(remote.decode_times.total, 0.0);
  EXPECT_NEAR(remote.decode_times.total, steps_s, 1e-9 + 1e-9 * steps_s);
  EXPECT_EQ(remote.decode_times.host_attention, 0.0);  // no host split asked for
  EXPECT_EQ(remote.last_plan.l, (std::vector<std::int64_t>{3, 3}));
  EXPECT_EQ(served.stack.store->stats().sequences, 0u);  // released after the request
  EXPECT_EQ(client.status().completed, 1u);
}

// Sends raw frames on a DEALER and returns the one-frame reply (decoded as a WorkerEvent).
struct Raw {
  explicit Raw(Served& served)
      : socket(net::make_socket(served.context, zmq::socket_type::dealer)) {
    socket.connect(served.service.endpoint());
  }
  void send(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      zmq::message_t m(frames[i].data(), frames[i].size());
      socket.send(m, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  // The reply's error reason, or "" for a non-error reply.
  std::string error_reply(std::uint64_t* id = nullptr) {
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, milliseconds(3000));
    if ((item.revents & ZMQ_POLLIN) == 0) return "NO REPLY";
    zmq::message_t m;
    (void)socket.recv(m);
    net::Frame frame(m);
    const auto event = frame.root<wire::WorkerEvent>();
    if (id != nullptr) *id = event.getId();
    return event.isError() ? std::string(event.getError().getReason().cStr()) : "";
  }
  zmq::socket_t socket;
};

std::string bytes(capnp::MallocMessageBuilder& m) {
  const auto msg = net::encode(m);
  return {static_cast<const char*>(msg.data()), msg.size()};
}

std::string generate_message(std::uint64_t id, const std::vector<std::int32_t>& prompt,
                             std::int64_t n, std::int64_t split = -1, std::uint64_t deadline = 0) {
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<wire::WorkerRequest>();
  r.setId(id);
  r.setDeadlineUnixMs(deadline);
  auto g = r.initGenerate();
  auto p = g.initPrompts(1).init(0, static_cast<unsigned>(prompt.size()));
  for (unsigned i = 0; i < prompt.size(); ++i) p.set(i, prompt[i]);
  g.setMaxNewTokens(n);
  g.setSplit(split);
  return bytes(m);
}

TEST(WorkerService, BadWireInputIsAnsweredCountedAndSurvived) {
  Served served;
  Raw raw(served);
  const std::string valid = generate_message(7, {2, 5}, 2);
  struct Case {
    std::string what;
    std::vector<std::string> frames;
    std::string expect;  // in the reason
  };
  capnp::MallocMessageBuilder unknown;
  {
    // A union discriminant past the last member this build knows: set it in the raw words.
    auto r = unknown.initRoot<wire::WorkerRequest>();
    r.setId(9);
    r.setStats();
  }
  std::string unknown_bytes = bytes(unknown);
  // Data section: id (8 bytes), deadline (8 bytes), discriminant (2 bytes) after the 16-byte
  // segment table and root pointer.
  unknown_bytes[16 + 16] = 42;
  const std::vector<Case> cases{
      {"garbage", {"this is not a message"}, "malformed"},
      {"three frames", {valid, valid}, "frames"},
      {"truncated", {valid.substr(0, valid.size() - 16)}, "malformed"},
      {"unknown type", {unknown_bytes}, "unknown worker request type"},
      {"token outside vocab", {generate_message(1, {2, 999999}, 2)}, "999999"},
      {"empty prompt", {generate_message(1, {}, 2)}, "empty"},
      {"zero new tokens", {generate_message(1, {2}, 0)}, "maxNewTokens 0"},
      {"bad split", {generate_message(1, {2}, 2, -5)}, "split -5"},
      {"past positions", {generate_message(1, {2, 3}, 255)}, "positions"},
      {"past deadline", {generate_message(1, {2, 3}, 2, -1, 1000)}, "deadline"},
  };
  for (const auto& c : cases) {
    raw.send(c.frames);
    const std::string reason = raw.error_reply();
    EXPECT_NE(reason.find(c.expect), std::string::npos) << c.what << ": " << reason;
  }
  WorkerClient client(served.context, served.service.endpoint());
  EXPECT_EQ(client.status().rejected_messages, cases.size());
  // Still serving.
  const auto ok = client.generate(request({{2, 5}}, 3));
  EXPECT_EQ(ok.sequences[0].tokens.size(), 3u);
}

// A frame over the worker's limit disconnects its sender before it is buffered (no reply, nothing
// held); the worker serves on.
TEST(WorkerService, AnOversizedFrameDisconnectsItsSender) {
  Served served;
  Raw raw(served);
  raw.send({std::string(WorkerServiceOptions{}.router_limits.max_message_bytes + 8, '\0')});
  zmq::pollitem_t item{raw.socket.handle(), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, milliseconds(500));
  EXPECT_EQ(item.revents & ZMQ_POLLIN, 0) << "an oversized frame was answered, so it was read";
  WorkerClient client(served.context, served.service.endpoint());
  EXPECT_EQ(client.generate(request({{2, 5}}, 3)).sequences[0].tokens.size(), 3u);
}

// A client that never reads its events: once its queue is full for `stalled_client`, its request
// is cancelled and its sequences freed (the worker does not buffer a stream nobody reads); a
// client that reads is served meanwhile.
TEST(WorkerService, AClientThatStopsReadingIsCancelledAndItsSequencesFreed) {
  WorkerServiceOptions options;
  options.stalled_client = milliseconds(50);
  options.router_limits.send_queue = 4;
  Served served(options);
  zmq::socket_t mute = net::make_socket(served.context, zmq::socket_type::dealer);
  mute.set(zmq::sockopt::rcvbuf, 4096);  // and its kernel buffer stays small
  mute.set(zmq::sockopt::rcvhwm, 1);
  mute.connect(served.service.endpoint());
  capnp::MallocMessageBuilder m;  // 32 prompts x 250 tokens with logits: 16 MB of events
  auto r = m.initRoot<wire::WorkerRequest>();
  r.setId(4242);
  auto g = r.initGenerate();
  auto prompts = g.initPrompts(32);
  for (unsigned i = 0; i < 32; ++i) {
    auto p = prompts.init(i, 3);
    p.set(0, 2);
    p.set(1, static_cast<std::int32_t>(5 + i));
    p.set(2, 7);
  }
  g.setMaxNewTokens(250);
  g.setSplit(-1);
  g.setKeepLogits(true);
  g.initSampling().setIgnoreEos(true);
  mute.send(net::encode(m), zmq::send_flags::none);

  // The mute client's 32 prompts keep the worker busy; under a sanitizer a step takes long.
  WorkerClient client(served.context, served.service.endpoint(),
                      kvpr::test_timing::slow(std::chrono::milliseconds(10000)));
  EXPECT_EQ(client.generate(request({{2, 5}}, 3)).sequences[0].tokens.size(), 3u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  WorkerStatus st = client.status();
  while ((st.running + st.queued > 0 || served.stack.store->stats().sequences > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
    st = client.status();
  }
  EXPECT_EQ(st.running + st.queued, 0u);
  EXPECT_EQ(served.stack.store->stats().used_bytes, 0u);
  bool counted = false;
  for (const auto& family : served.service.registry().Collect()) {
    if (family.name != "kvpr_abandoned_requests_total") continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) {
        if (label.name == "reason" && label.value == "stalled") {
          counted = metric.counter.value == 1.0;
        }
      }
    }
  }
  EXPECT_TRUE(counted) << "the stalled client's request was not counted as abandoned";
}

TEST(WorkerService, StopDrainsQueuedAndRunningRequests) {
  auto served = std::make_unique<Served>();
  std::vector<GenerateResult> results(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      try {
        WorkerClient client(served->context, served->service.endpoint());
        results[static_cast<std::size_t>(i)] = client.generate(request({{2, 5, 7}}, 250));
      } catch (const Error& e) {  // reported below (a throw here would end the process)
        errors[static_cast<std::size_t>(i)] = e.what();
      }
    });
  }
  WorkerClient probe(served->context, served->service.endpoint());
  WorkerStatus st;
  // All three accepted (a request sent after stop() began is refused, which is not what this
  // test is about), and at least one still queued or running.
  for (int i = 0; i < 400 && st.queued + st.running + st.completed < 3; ++i) {
    std::this_thread::sleep_for(milliseconds(5));
    st = probe.status();
  }
  // (EXPECT, not ASSERT: the client threads are joined below whatever happens.)
  EXPECT_EQ(st.queued + st.running + st.completed, 3u) << "not every request reached the worker";
  EXPECT_GE(st.queued + st.running, 1u) << "the requests were not in flight when stop() began";
  served->service.stop();  // returns once all three are answered
  for (auto& t : clients) t.join();
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(errors[i], "") << "request " << i;
    if (errors[i].empty()) {
      EXPECT_EQ(results[i].sequences.at(0).tokens.size(), 250u);
    }
  }
}

TEST(WorkerService, OneTokenRequestsNeedNoDecodeStep) {
  Served served;
  WorkerClient client(served.context, served.service.endpoint());
  const auto r = client.generate(request({{2, 5, 7}, {2, 9}}, 1));
  ASSERT_EQ(r.sequences.size(), 2u);
  EXPECT_EQ(r.sequences[0].tokens.size(), 1u);
  EXPECT_EQ(r.last_plan.l.size(), 2u);
  EXPECT_TRUE(r.step_s.empty());
}

TEST(WorkerService, ARequestPastItsDeadlineEndsWithAnErrorAndFreesItsSequences) {
  Served served;
  WorkerClient client(served.context, served.service.endpoint());
  // 250 tokens take ~100 ms here; the deadline passes while it decodes (or, on a very slow
  // machine, before it arrives: either way the answer names the deadline).
  auto work = request({{2, 5, 7}}, 250);
  work.deadline_unix_ms = net::now_unix_ms() + 20;
  const auto start = std::chrono::steady_clock::now();
  try {
    client.generate(work);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deadline"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(5000));
  EXPECT_EQ(served.stack.store->stats().used_bytes, 0u);
}

TEST(WorkerClient, SilentWorkerGivesDisconnectedWithinTheDeadline) {
  zmq::context_t context;
  net::Router silent(context, "tcp://127.0.0.1:0");  // accepts connections, never answers
  WorkerClient client(context, silent.endpoint(), milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  try {
    client.generate(request({{2, 5}}, 2));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
}

TEST(WorkerClient, DeadEndpointGivesDisconnected) {
  zmq::context_t context;
  std::string endpoint;
  {
    net::Router gone(context, "tcp://127.0.0.1:0");
    endpoint = gone.endpoint();
  }
  WorkerClient client(context, endpoint, milliseconds(300));
  EXPECT_THROW(client.status(), Error);
}

// Prompt scores on the wire: they come back as sent, carrying the prompt's own tokens, and a
// peer's event is checked against the request: a count that is not the prompt's length less
// one, a sequence scored twice or out of range, top entries that do not add up.
TEST(WorkerWire, PromptScoresRoundTripAndAreCheckedAgainstTheRequest) {
  JobStep step;
  step.tokens = {{0, 7, -1.0f, {{7, -1.0f}}}};
  step.with_logprobs = true;
  step.prompts = {{0, {{0, 0, -2.0f, {{3, -0.5f}}}, {0, 0, -3.0f, {{4, -0.25f}}}}}};
  const std::vector<std::vector<std::int32_t>> prompts = {{1, 5, 6}};
  std::vector<float> logits;
  const auto decoded = [&](const JobStep& s, const std::vector<std::vector<std::int32_t>>& p,
                           const std::function<void(wire::Tokens::Builder)>& tamper = {}) {
    capnp::MallocMessageBuilder message;
    auto tokens = message.initRoot<wire::Tokens>();
    wire_adapter::encode_step(s, tokens);
    if (tamper) tamper(tokens);
    return wire_adapter::decode_step(tokens.asReader(), p, false, logits);
  };
  const JobStep got = decoded(step, prompts);
  ASSERT_EQ(got.prompts.size(), 1u);
  ASSERT_EQ(got.prompts[0].tokens.size(), 2u);
  EXPECT_EQ(got.prompts[0].tokens[0].token, 5);
  EXPECT_EQ(got.prompts[0].tokens[1].token, 6);
  EXPECT_EQ(got.prompts[0].tokens[1].logprob, -3.0f);
  EXPECT_EQ(got.prompts[0].tokens[1].top, (std::vector<TokenLogprob>{{4, -0.25f}}));

  const auto refused = [&](const std::function<JobStep()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused([&] { return decoded(step, {{1, 5}}); }, "2 prompt scores for a prompt of 2 tokens");
  JobStep twice = step;
  twice.prompts.push_back(step.prompts[0]);
  refused([&] { return decoded(twice, prompts); }, "each scored once");
  JobStep other = step;
  other.prompts[0].index = 1;
  refused([&] { return decoded(other, prompts); }, "prompt scores of sequence 1 (1 sequences");
  refused(
      [&] {
        return decoded(step, prompts,
                       [](wire::Tokens::Builder t) { t.getPrompts()[0].setTopN(2); });
      },
      "do not match");
}

}  // namespace
}  // namespace kvpr::worker
