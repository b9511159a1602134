# A worker's client protocol (ZeroMQ DEALER -> ROUTER). A client submits a generation request and
# receives a stream of events with the same id: `accepted`, then `queued` keep-alives while it
# waits, `tokens` for each step its sequences take part in (and `working` while a step takes
# long), then `done` with the summary, or `error` at any point. `cancel` stops a request (or one
# of its sequences) of the same client: the worker frees it before its next step.
@0xf940b045a6c7afdf;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvpr::wire");

using Common = import "common.capnp";
using Planner = import "planner.capnp";

struct WorkerRequest {
  id @0 :UInt64;
  deadlineUnixMs @1 :UInt64;
  union {
    generate @2 :Generate;
    stats @3 :Void;
    cancel @4 :Cancel;
  }
}

struct Cancel {
  request @0 :UInt64;     # the id of a request this client sent
  index @1 :Int64 = -1;   # one of its sequences; -1: all of them
}

# How tokens are chosen (kvpr::SamplingParams); absent: greedy, stopping at the model's EOS.
struct Sampling {
  temperature @0 :Float64;
  topK @1 :Int64;
  topP @2 :Float64 = 1.0;
  hasSeed @3 :Bool;
  seed @4 :UInt64;
  presencePenalty @5 :Float64;
  frequencyPenalty @6 :Float64;
  stopTokenIds @7 :List(Int32);
  ignoreEos @8 :Bool;
  logprobs @9 :Int32 = -1;
}

struct Generate {
  prompts @0 :List(List(Int32));  # token ids, one list per sequence
  maxNewTokens @1 :Int64;
  policy @2 :Common.Policy;
  split @3 :Int64;                # fixed l; -1: ask the planner
  keepLogits @4 :Bool;            # send each step's logits rows back
  sampling @5 :Sampling;
  hostSplit @6 :Int64 = -1;       # fixed m: attend over [m, s) on the host; -1: the worker's default
  scorePrompt @7 :Bool;           # report each prompt token's log-probability (PromptScores)
}

struct WorkerEvent {
  id @0 :UInt64;
  union {
    error @1 :Common.Error;
    accepted @2 :UInt64;  # requests ahead of this one
    working @3 :Void;     # the request is alive (sent while a step takes long)
    tokens @4 :Tokens;
    done @5 :Summary;
    stats @6 :WorkerStats;
    queued @7 :UInt64;    # still waiting, with this many requests ahead (a keep-alive)
  }
}

enum FinishReason {
  stop @0;       # a stop or EOS id (delivered as the sequence's last token)
  length @1;     # maxNewTokens, or the model's last position
  cancelled @2;  # a cancel
}

struct Finished {
  index @0 :UInt32;
  reason @1 :FinishReason;
}

struct Tokens {
  step @0 :Int64;              # the worker's decode step (its admissions come before step 1)
  tokens @1 :List(Int32);      # one per listed sequence
  logits @2 :List(Float32);    # [tokens, vocab] when keepLogits
  indices @3 :List(UInt32);    # the sequence of each token
  logprobs @4 :List(Float32);  # of each token, when sampling.logprobs >= 0
  topN @5 :UInt32;             # entries of topIds and topLogprobs per token
  topIds @6 :List(Int32);      # [tokens, topN], most likely first
  topLogprobs @7 :List(Float32);
  finished @8 :List(Finished); # sequences that ended with this event
  prompts @9 :List(PromptScores);  # with scorePrompt, beside each sequence's first token
}

# A scored prompt: entry i is prompt token i + 1, its log-probability under the logits of the
# position before it and the topN most likely tokens there. Of a request's sequences with the
# same prompt only the first is scored.
struct PromptScores {
  index @0 :UInt32;            # the sequence
  logprobs @1 :List(Float32);  # one per prompt token after the first
  topN @2 :UInt32;             # entries of topIds and topLogprobs per prompt token
  topIds @3 :List(Int32);      # [logprobs, topN], most likely first
  topLogprobs @4 :List(Float32);
}

struct Phases {
  transfer @0 :Float64;
  recompute @1 :Float64;
  attention @2 :Float64;
  other @3 :Float64;
  idle @4 :Float64;
  total @5 :Float64;
  hostAttention @6 :Float64;  # host threads attending over [m, s), overlapping the device
}

struct Summary {
  prefillS @0 :Float64;
  stepS @1 :List(Float64);
  decode @2 :Phases;
  recomputeTokens @3 :Int64;
  transferTokens @4 :Int64;
  h2dBytes @5 :UInt64;
  d2hBytes @6 :UInt64;
  lastPlan @7 :Planner.Plan;
  totalS @8 :Float64;
  worker @9 :Text;
}

struct WorkerStats {
  name @0 :Text;
  queued @1 :UInt64;
  running @2 :UInt64;
  completed @3 :UInt64;
  failed @4 :UInt64;
  rejectedMessages @5 :UInt64;
  runningSequences @6 :UInt64;
  waitingSequences @7 :UInt64;
  maxBatch @8 :UInt64;
  maxQueue @9 :UInt64;
  kvFreeBytes @10 :UInt64;
  preemptions @11 :UInt64;
  cancellations @12 :UInt64;
}
