#include "kvpr/kvstore/remote_kv_store.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/block_layout.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "kvstore_wire.h"
#include "remote_impl.h"

namespace kvpr::kvstore {

using remote::Sequence;

namespace {
// SeqIds of every RemoteKvStore of this process: never reused, so a lost registration's ids and
// another store's ids are unknown to a store (the daemon's handles never leave this class).
std::atomic<SeqId> next_local_seq{1};
}  // namespace

RemoteKvStore::RemoteKvStore(zmq::context_t& context, const StoreShape& shape,
                             RemoteKvStoreOptions options)
    : impl_(std::make_unique<Impl>(context, shape, std::move(options))) {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mutex);
    s.register_locked();
  }
  if (s.options.heartbeat) s.heartbeat_thread = std::thread([&s] { s.heartbeat_loop(); });
  s.progress_thread = std::thread([&s] { s.progress_loop(); });
}

RemoteKvStore::~RemoteKvStore() {
  Impl& s = *impl_;
  if (s.heartbeat_thread.joinable()) {
    {
      std::lock_guard lock(s.heartbeat_mutex);
      s.heartbeat_stop = true;
    }
    s.heartbeat_wake.notify_all();
    s.heartbeat_thread.join();
  }
  {
    std::lock_guard lock(s.mutex);
    s.progress_stop = true;
  }
  s.progress_wake.notify_all();
  s.progress_thread.join();
  std::lock_guard lock(s.mutex);
  s.drain_fetches_locked(std::nullopt);
  if (s.session != nullptr && !s.lost) {
    try {  // best effort: a lease that runs out frees the same memory later
      s.exchange(
          s.rpc, s.session->client,
          [](wire::KvRequest::Builder request) { request.setUnregister(); },
          std::min(s.options.timeout, net::milliseconds(500)));
    } catch (const std::exception&) {
    }
  }
}

const StoreShape& RemoteKvStore::shape() const {
  return impl_->shape;
}

SeqId RemoteKvStore::open() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  s.recover_locked();
  for (int attempt = 0;; ++attempt) {
    try {
      auto frame = s.call_locked([](wire::KvRequest::Builder request) { request.setOpen(); });
      Capability handle;
      net::decode_guard([&] { handle = get_capability(frame->root<wire::KvReply>().getOpened()); });
      const SeqId seq = next_local_seq.fetch_add(1);
      Sequence& q = s.sequences[seq];
      q.handle = handle;
      q.blocks.resize(static_cast<std::size_t>(s.shape.n_layers));
      return seq;
    } catch (const Error& e) {
      // The daemon answered "unknown client" (the lease ran out, or it restarted, since the
      // check): register once more. No answer at all is final: the caller's timeout is spent.
      if (attempt > 0 || e.kind() != ErrorKind::disconnected || !s.answered) throw;
      s.recover_locked();
    }
  }
}

void RemoteKvStore::reserve(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("reserve", seqs, n_tokens, kMaxTokens);
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  // The block tables are here: only the sequences whose blocks fall short go to the daemon.
  std::vector<SeqId> short_of;
  std::vector<Sequence*> growing;
  for (const SeqId seq : seqs) s.find_locked(seq);  // all known before anything changes
  for (const SeqId seq : seqs) {
    Sequence& q = s.find_locked(seq);
    const std::int64_t target = q.length + n_tokens;
    const auto held = static_cast<std::int64_t>(q.blocks.front().size());
    if (blocks_for(s.shape, target) <= held) {
      // Inside blocks it holds: reserved here, and the daemon learns it with the commit.
      q.reserved = std::max(q.reserved, target);
      continue;
    }
    short_of.push_back(seq);
    growing.push_back(&q);
  }
  if (short_of.empty()) return;
  auto frame = s.call_locked([&](wire::KvRequest::Builder request) {
    auto batch = request.initReserveBatch();
    auto list = batch.initSeqs(static_cast<unsigned>(short_of.size()));
    for (unsigned i = 0; i < growing.size(); ++i) set_capability(list[i], growing[i]->handle);
    batch.setNTokens(n_tokens);
  });
  net::decode_guard([&] {
    const auto replies = frame->root<wire::KvReply>().getReservedBatch();
    if (replies.size() != short_of.size()) {
      fail(s.peer, ": reserve of ", short_of.size(), " sequences answered with ", replies.size(),
           " reservations");
    }
    for (unsigned i = 0; i < replies.size(); ++i) {
      const auto r = replies[i];
      const std::int64_t first = r.getFirstBlock();
      const std::int64_t per_layer = r.getBlocksPerLayer();
      const auto offsets = r.getOffsets();
      if (first < 0 || per_layer < 0 ||
          offsets.size() != static_cast<std::size_t>(per_layer * s.shape.n_layers)) {
        fail(s.peer, ": reserve reply with ", offsets.size(), " offsets for ", per_layer,
             " blocks per layer");
      }
      Sequence& q = *growing[i];
      unsigned next = 0;
      for (auto& layer_blocks : q.blocks) {
        layer_blocks.resize(std::min(layer_blocks.size(), static_cast<std::size_t>(first)));
        for (std::int64_t b = 0; b < per_layer; ++b) layer_blocks.push_back(offsets[next++]);
      }
      q.reserved = r.getReservedTokens();
    }
  });
}

void RemoteKvStore::commit(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("commit", seqs, n_tokens, kMaxTokens);
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  std::vector<Sequence*> found;
  for (const SeqId seq : seqs) {
    Sequence& q = s.find_locked(seq);
    if (n_tokens > q.reserved - q.length) {
      fail(s.peer, ": commit of ", n_tokens, " tokens to sequence ", seq, " with ", q.length,
           " committed and ", q.reserved, " reserved");
    }
    found.push_back(&q);
  }
  if (found.empty() || n_tokens == 0) return;
  if (!s.session->zero_copy) {  // the rows first (one flush for the batch), then the lengths
    std::vector<Impl::Piece> pieces;
    for (const Sequence* q : found) {
      for (std::int64_t layer = 0; layer < s.shape.n_layers; ++layer) {
        for (Part part : {Part::act, Part::k, Part::v}) {
          s.add_pieces(pieces, *q, layer, part, q->length, q->length + n_tokens);
        }
      }
    }
    s.transfer_locked(pieces, true);
  }
  s.call_locked([&](wire::KvRequest::Builder request) {
    auto batch = request.initCommitBatch();
    auto list = batch.initSeqs(static_cast<unsigned>(seqs.size()));
    for (unsigned i = 0; i < found.size(); ++i) set_capability(list[i], found[i]->handle);
    batch.setNTokens(n_tokens);
  });
  for (Sequence* q : found) q->length += n_tokens;
}

std::int64_t RemoteKvStore::length(SeqId seq) const {
  const Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  return s.find_locked(seq).length;
}

void RemoteKvStore::truncate(SeqId seq, std::int64_t n_tokens) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  Sequence& q = s.find_locked(seq);
  s.drain_fetches_locked(seq);  // their gets write into blocks truncate may hand back
  s.call_locked([&](wire::KvRequest::Builder request) {
    auto st = request.initTruncate();
    set_capability(st.initSeq(), q.handle);
    st.setNTokens(n_tokens);
  });
  const auto keep = static_cast<std::size_t>(blocks_for(s.shape, n_tokens));
  for (auto& layer_blocks : q.blocks) {
    if (layer_blocks.size() > keep) layer_blocks.resize(keep);
  }
  q.length = n_tokens;
  q.reserved = std::min(q.reserved, static_cast<std::int64_t>(keep) * s.shape.block_tokens);
}

void RemoteKvStore::free(SeqId seq) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  const Capability handle = s.find_locked(seq).handle;
  s.drain_fetches_locked(seq);  // their gets write into blocks the daemon will hand out again
  s.sequences.erase(seq);       // gone for this client even when the daemon cannot be told
  s.call_locked(
      [&](wire::KvRequest::Builder request) { set_capability(request.initFree(), handle); });
}

int RemoteKvStore::host_threads(int wanted) const {
  const auto share = static_cast<int>(impl_->host_share.load());
  return share > 0 ? std::min(wanted, share) : wanted;
}

StoreStats RemoteKvStore::stats() const {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  auto frame = s.call_locked([](wire::KvRequest::Builder request) { request.setStats(); });
  StoreStats st;
  net::decode_guard([&] {
    const auto r = frame->root<wire::KvReply>().getStats();
    st.capacity_bytes = r.getCapacityBytes();
    st.used_bytes = r.getUsedBytes();
    st.sequences = r.getSequences();
    st.allocation_failures = r.getAllocationFailures();
  });
  st.lookups = s.lookups;
  return st;
}

std::vector<HostSpan> RemoteKvStore::locate_at_daemon(SeqId seq, std::int64_t layer, Part part,
                                                      std::int64_t t0, std::int64_t t1) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  const Capability handle = s.find_locked(seq).handle;
  auto frame = s.call_locked([&](wire::KvRequest::Builder request) {
    auto loc = request.initLocate();
    set_capability(loc.initSeq(), handle);
    loc.setLayer(layer);
    loc.setPart(wire_adapter::to_wire(part));
    loc.setT0(t0);
    loc.setT1(t1);
  });
  std::vector<HostSpan> spans;
  net::decode_guard([&] {
    for (const auto span : frame->root<wire::KvReply>().getSpans()) {
      if (span.getOffset() >= s.session->arena_bytes) {
        fail(s.peer, ": span offset ", span.getOffset(), " outside the arena");
      }
      spans.push_back({s.session->base + span.getOffset(), span.getT0(), span.getNTokens()});
    }
  });
  return spans;
}

bool RemoteKvStore::zero_copy() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->zero_copy;
}

void* RemoteKvStore::arena() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->base;
}

std::size_t RemoteKvStore::arena_bytes() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->session->arena_bytes;
}

std::uint64_t RemoteKvStore::generation() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->generation;
}

}  // namespace kvpr::kvstore
