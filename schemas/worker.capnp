# A worker's client protocol (ZeroMQ DEALER -> ROUTER). A client submits a generation request and
# receives a stream of events with the same id: `accepted`, then `tokens` once per step (and
# `working` while a step takes long), then `done` with the summary, or `error` at any point.
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
  }
}

struct Generate {
  prompts @0 :List(List(Int32));  # token ids, one list per sequence
  maxNewTokens @1 :Int64;
  policy @2 :Common.Policy;
  split @3 :Int64;                # fixed l; -1: ask the planner
  keepLogits @4 :Bool;            # send each step's logits rows back
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
  }
}

struct Tokens {
  step @0 :Int64;          # 0: chosen from the prefill's last logits
  tokens @1 :List(Int32);  # one per sequence
  logits @2 :List(Float32); # [sequences, vocab] when keepLogits
}

struct Phases {
  transfer @0 :Float64;
  recompute @1 :Float64;
  attention @2 :Float64;
  other @3 :Float64;
  idle @4 :Float64;
  total @5 :Float64;
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
}
