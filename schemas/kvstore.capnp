# The kvstore daemon's control protocol (ZeroMQ DEALER -> ROUTER, one message per frame).
# Bulk rows never travel here: a registered client reads and writes the daemon's arena through UCX
# (a zero-copy mapping on the same host, ucp_get/ucp_put across hosts); these messages only manage
# sequences and say where their rows live (byte offsets into the arena).
@0xa55dcd8be1b291a4;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvpr::wire");

using Common = import "common.capnp";

enum Part {
  act @0;
  k @1;
  v @2;
}

struct StoreShape {
  nLayers @0 :Int64;
  h @1 :Int64;     # width of an activation row
  hKv @2 :Int64;   # width of a K row and of a V row
  dtype @3 :Common.DType;
}

# A capability: 128 random bits from the daemon's CSPRNG naming one client or one sequence.
# Holding it is necessary, not sufficient: the daemon also checks that a sequence belongs to the
# client of the request and that the client belongs to the request's authenticated principal, and
# answers `permissionDenied` (the same answer for a handle it never made) otherwise.
struct Handle {
  hi @0 :UInt64;
  lo @1 :UInt64;
}

struct KvRequest {
  id @0 :UInt64;              # echoed in the reply
  deadlineUnixMs @1 :UInt64;  # 0: none; a request past its deadline is answered with an error
  client @2 :Handle;          # from `registered`; unset before registering
  union {
    register @3 :Register;
    heartbeat @4 :Void;       # renews the client's lease
    unregister @5 :Void;      # frees every sequence of the client
    open @6 :Void;
    reserve @7 :SeqTokens;    # blocks for nTokens more tokens in every layer (idempotent)
    commit @8 :SeqTokens;     # the next nTokens reserved tokens now hold data
    locate @9 :Locate;        # where tokens [t0, t1) of one part of one layer live
    length @10 :Handle;       # committed tokens of this sequence
    truncate @11 :SeqTokens;  # keep the first nTokens tokens
    free @12 :Handle;         # this sequence
    stats @13 :Void;
    reserveBatch @14 :BatchTokens;  # reserve for every sequence, all or nothing
    commitBatch @15 :BatchTokens;   # commit for every sequence, all or nothing; the tokens need
                                    # only lie in the sequence's blocks (a client that holds the
                                    # block tables reserves inside them without asking)
  }
}

struct Register {
  name @0 :Text;            # for logs and metrics
  shape @1 :StoreShape;
  ucxAddress @2 :Data;      # the client's UCX worker address (for the daemon's endpoint back)
  hostThreads @3 :UInt32;   # host-attention threads the client would use (0: none)
}

struct SeqTokens {
  seq @0 :Handle;
  nTokens @1 :Int64;
}

# One decode step's call for a whole batch: each sequence at most once, at most 4096 of them.
struct BatchTokens {
  seqs @0 :List(Handle);
  nTokens @1 :Int64;
}

struct Locate {
  seq @0 :Handle;
  layer @1 :Int64;
  part @2 :Part;
  t0 @3 :Int64;
  t1 @4 :Int64;
}

struct KvReply {
  id @0 :UInt64;
  union {
    error @1 :Common.Error;
    registered @2 :Registered;
    ok @3 :Void;
    opened @4 :Handle;        # the new sequence
    reserved @5 :Reserved;
    spans @6 :List(Span);
    length @7 :Int64;
    stats @8 :Stats;
    reservedBatch @9 :List(Reserved);  # one per sequence of a reserveBatch, in its order
    lease @10 :Lease;         # a heartbeat's answer
  }
}

# What a registered client may use now: renewed with every heartbeat.
struct Lease {
  hostThreads @0 :UInt32;   # its share of the node's host-attention threads
}

struct Registered {
  client @0 :Handle;
  blockTokens @1 :Int64;    # tokens per block for the registered shape
  leaseMs @2 :UInt64;       # heartbeat more often than this or lose every sequence
  arenaAddress @3 :UInt64;  # the arena's address in the daemon (for the rkey)
  arenaBytes @4 :UInt64;
  rkey @5 :Data;            # packed UCX remote key of the arena
  ucxAddress @6 :Data;      # the daemon's UCX worker address
  hostThreads @7 :UInt32;   # its share of the node's host-attention threads
}

struct Reserved {
  reservedTokens @0 :Int64;  # tokens with blocks, after this call
  firstBlock @1 :Int64;      # index (per layer) of the first new block
  blocksPerLayer @2 :Int64;  # new blocks in each layer
  offsets @3 :List(UInt64);  # arena offsets of the new blocks, layer-major
}

struct Span {
  offset @0 :UInt64;  # arena offset of row t0
  t0 @1 :Int64;
  nTokens @2 :Int64;
}

struct Stats {
  capacityBytes @0 :UInt64;
  usedBytes @1 :UInt64;
  sequences @2 :UInt64;
  clients @3 :UInt64;
  lookups @4 :UInt64;
  allocationFailures @5 :UInt64;
  leaseExpiries @6 :UInt64;
  rejectedMessages @7 :UInt64;
  metadataBytes @8 :UInt64;  # sequence and client tables, counted against capacityBytes
}
