// The KvStoreClient of a kvstore daemon (KvStoreService): sequences are managed over ZeroMQ
// (schemas/kvstore.capnp) and rows move over UCX, never through the control channel.
//
// On the same host the daemon's arena is mapped into this process (ucp_rkey_ptr) and spans point
// straight into it: zero copy, the engine's copy queue reads and writes the daemon's memory. When
// it cannot be mapped (another host, or UCX_TLS without shared memory) spans point into a local
// mirror of the arena (an anonymous mapping whose pages are committed when touched): locate()
// re-reads the committed rows of the range with ucp_get (or waits for what prefetch() already
// asked for), writes land in the mirror, and commit() pushes the committed rows with ucp_put and
// a flush before it tells the daemon. Either way the block table of every sequence is kept here
// from the daemon's reserve replies, so locate(), length() and a reserve that the blocks already
// cover need no round trip; a decode step costs one (the batch's commit).
//
// Failure model: every round trip gives up after options.timeout with ErrorKind::disconnected
// (a dead daemon never hangs a caller), and so does an answer of `permissionDenied` (the daemon
// no longer knows this client's handle: its lease ran out or the daemon restarted; the handles
// of clients and sequences are the daemon's random capabilities, the SeqIds this class hands out
// are local). The registration is then considered lost; the next
// open() re-registers when the daemon answers again (new client handle, UCX endpoint, rkey and
// mapping, generation() + 1). Sequences of a lost registration are gone: using them is an error.
// The mapping of the previous registration stays valid until the next successful re-register
// (a copy still reading it does not crash) or until this store is destroyed.
//
// Threads: thread-safe (one mutex around the block tables and every UCX call); a heartbeat thread
// renews the lease every lease/3 on its own socket; a progress thread drives the UCX worker while
// prefetched gets are in flight (it sleeps otherwise). free(), truncate() and a re-register first
// wait for the gets still writing into the blocks they give up.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "kvpr/kvstore/kv_store_client.h"

namespace kvpr::kvstore {

struct RemoteKvStoreOptions {
  std::string endpoint = "tcp://127.0.0.1:5555";
  std::string name = "client";  // for the daemon's logs
  std::chrono::milliseconds timeout{2000};
  bool heartbeat = true;  // false: no heartbeats, the lease runs out (tests)
  // Host-attention threads this worker would use: asked for at registration; the daemon answers
  // with the share of the node's budget it may use (host_threads()).
  std::uint32_t host_threads = 0;
};

class RemoteKvStore final : public KvStoreClient {
 public:
  // Registers with the daemon (throws ErrorKind::disconnected when it does not answer in time).
  // shape.block_tokens is ignored: the daemon picks it, and shape() reports it.
  RemoteKvStore(zmq::context_t& context, const StoreShape& shape,
                RemoteKvStoreOptions options = {});
  ~RemoteKvStore() override;  // unregisters (best effort), closes UCX; never throws
  RemoteKvStore(const RemoteKvStore&) = delete;
  RemoteKvStore& operator=(const RemoteKvStore&) = delete;

  const StoreShape& shape() const override;
  SeqId open() override;
  using KvStoreClient::commit;
  using KvStoreClient::reserve;
  // No round trip while every sequence's blocks suffice; else one reserveBatch for those short.
  void reserve(std::span<const SeqId> seqs, std::int64_t n_tokens) override;
  // One commitBatch per call (none for n = 0); across hosts the rows are pushed first.
  void commit(std::span<const SeqId> seqs, std::int64_t n_tokens) override;
  // Across hosts: posts the ucp_gets of the ranges' committed rows and returns; a progress thread
  // drives them, and locate() of a prefetched range waits only for what has not landed. Same
  // host (zero copy): nothing to do.
  void prefetch(std::span<const Range> ranges) override;
  std::vector<HostSpan> locate(SeqId seq, std::int64_t layer, Part part, std::int64_t t0,
                               std::int64_t t1) override;
  std::int64_t length(SeqId seq) const override;
  void truncate(SeqId seq, std::int64_t n_tokens) override;
  void free(SeqId seq) override;
  // capacity, used bytes, sequences and allocation failures of the whole daemon; lookups are this
  // client's locate calls (answered here, the daemon never sees them).
  StoreStats stats() const override;
  int host_threads(int wanted) const override;

  // The daemon's locate over the wire, as spans in arena() (no rows are fetched): for checking
  // the local block table.
  std::vector<HostSpan> locate_at_daemon(SeqId seq, std::int64_t layer, Part part, std::int64_t t0,
                                         std::int64_t t1);

  bool zero_copy() const;  // spans point into the daemon's memory
  // The memory behind every span of the current registration (the mapped arena, or the mirror),
  // to register with a device once per generation.
  void* arena() const;
  std::size_t arena_bytes() const;
  std::uint64_t generation() const;  // 1 after the first registration, +1 per re-register

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpr::kvstore
