# The planner service's protocol (ZeroMQ DEALER -> ROUTER). Workers report their measured hardware
# profile and ask for plans; any replica can answer any request, since a replica keeps nothing but
# the profiles it was sent (a worker reports to every replica it uses).
@0xf074c01ff650cee5;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvpr::wire");

using Common = import "common.capnp";

struct PlannerRequest {
  id @0 :UInt64;
  deadlineUnixMs @1 :UInt64;
  union {
    plan @2 :PlanRequest;
    report @3 :Profile;
    stats @4 :Void;
  }
}

struct ModelShape {
  nLayers @0 :Int64;
  h @1 :Int64;
  hKv @2 :Int64;
  ffn @3 :Int64;
  gatedFfn @4 :Bool;
  elementBytes @5 :Int64;  # p
  blockTokens @6 :Int64;
}

struct PlanRequest {
  model @0 :ModelShape;
  s @1 :List(Int64);          # context length of each sequence
  policy @2 :Common.Policy;
  split @3 :Int64;            # fixed l (clamped to each s); -1: choose
  bytesPerS @4 :Float64;      # the worker's nominal link and GEMM rates, used without a profile
  flopsPerS @5 :Float64;
  fingerprint @6 :Text;       # the worker's profile, when it reported one
  hostSplit @7 :Int64 = -1;   # fixed m: attend over [m, s) on the host; -1: the planner's choice
  hostThreads @8 :Int64;      # the worker's share of its node's host threads; 0: the profile's
}

struct Point {
  x @0 :Float64;
  y @1 :Float64;
}

struct Profile {
  fingerprint @0 :Text;
  backend @1 :Text;
  description @2 :Text;
  created @3 :Text;
  h @4 :Int64;
  hKv @5 :Int64;
  nHeads @6 :Int64;
  headDim @7 :Int64;
  ffn @8 :Int64;
  h2dBytesPerS @9 :List(Point);
  d2hBytesPerS @10 :List(Point);
  recomputeFlopsPerS @11 :List(Point);
  attentionSPerToken @12 :Float64;
  attentionSPerQuery @13 :Float64;
  otherSPerLayer @14 :Float64;
  otherSPerRow @15 :Float64;
  vocab @16 :Int64;
  headS @17 :Float64;
  headSPerRow @18 :Float64;
}

struct Plan {
  policy @0 :Common.Policy;
  l @1 :List(Int64);
  chunk @2 :Int64;
  paperSchedule @3 :Bool;
  ratio @4 :Float64;
  predictedStepS @5 :Float64;
  reason @6 :Text;
  fingerprint @7 :Text;       # the profile the plan was made with; empty: the cost model on the
                              # request's rates (a replica that lost the worker's profile)
  m @8 :List(Int64);          # host attention from m of each sequence on; empty: none (m = s)
  hostRatio @9 :Float64;      # the share of [l, s) attended on the host the m follow
}

struct PlannerReply {
  id @0 :UInt64;
  union {
    error @1 :Common.Error;
    plan @2 :Plan;
    ok @3 :Void;
    stats @4 :PlannerStats;
  }
}

struct PlannerStats {
  planRequests @0 :UInt64;
  profiles @1 :UInt64;
  rejectedMessages @2 :UInt64;
}
