// RemoteKvStore's data path: spans from the block tables and, across hosts, the UCX gets and
// puts between the mirror and the daemon's arena; prefetches whose gets a progress thread drives
// while the caller computes, and locate(), which waits only for what has not landed.
#include <algorithm>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/block_layout.h"
#include "remote_impl.h"

namespace kvpr::kvstore {

using net::Clock;
using remote::Fetch;
using remote::FetchKey;
using remote::kMaxFetches;
using remote::kProgressInterval;
using remote::Sequence;

std::vector<HostSpan> RemoteKvStore::Impl::spans_locked(const Sequence& s, std::int64_t layer,
                                                        Part part, std::int64_t t0,
                                                        std::int64_t t1) const {
  const auto& blocks = s.blocks[static_cast<std::size_t>(layer)];
  std::byte* base = session->base;
  return spans_of(shape, part, t0, t1,
                  [&](std::int64_t b) { return base + blocks[static_cast<std::size_t>(b)]; });
}

void RemoteKvStore::Impl::add_pieces(std::vector<Piece>& pieces, const Sequence& q,
                                     std::int64_t layer, Part part, std::int64_t t0,
                                     std::int64_t t1) const {
  const std::size_t row = shape.row_bytes(part);
  for (const auto& span : spans_locked(q, layer, part, t0, t1)) {
    pieces.push_back({span.data, static_cast<std::size_t>(span.n_tokens) * row});
  }
}

std::vector<void*> RemoteKvStore::Impl::post_locked(const std::vector<Piece>& pieces, bool put,
                                                    ucs_status_t& first_error) {
  Session& s = *session;
  if (s.endpoint.get() == nullptr || s.endpoint.failed()) {
    lost = true;
    raise(ErrorKind::disconnected, peer, ": the UCX endpoint to the daemon is gone");
  }
  ucp_request_param_t param{};
  std::vector<void*> pending;
  first_error = UCS_OK;
  for (const Piece& piece : pieces) {
    if (piece.bytes == 0) continue;
    const std::uint64_t remote = s.arena_address + static_cast<std::uint64_t>(piece.data - s.base);
    void* request =
        put ? ucp_put_nbx(s.endpoint.get(), piece.data, piece.bytes, remote, s.rkey.get(), &param)
            : ucp_get_nbx(s.endpoint.get(), piece.data, piece.bytes, remote, s.rkey.get(), &param);
    if (UCS_PTR_IS_ERR(request)) {
      first_error = UCS_PTR_STATUS(request);
      break;
    }
    if (request != nullptr) pending.push_back(request);
  }
  if (put && first_error == UCS_OK) {  // puts are remotely complete only after a flush
    void* flush = ucp_ep_flush_nbx(s.endpoint.get(), &param);
    if (UCS_PTR_IS_ERR(flush)) {
      first_error = UCS_PTR_STATUS(flush);
    } else if (flush != nullptr) {
      pending.push_back(flush);
    }
  }
  return pending;
}

void RemoteKvStore::Impl::complete_locked(std::vector<void*>& pending, ucs_status_t first_error,
                                          bool put) {
  const auto deadline = Clock::now() + options.timeout;
  bool timed_out = false;
  for (void* request : pending) {
    ucs_status_t status = worker.wait(request, timed_out ? Clock::time_point::max() : deadline);
    if (status == UCS_ERR_TIMED_OUT) {
      // The daemon stopped answering: closing the endpoint completes what is still pending.
      timed_out = true;
      session->endpoint.close();
      status = worker.wait(request, Clock::time_point::max());
    }
    if (status != UCS_OK && first_error == UCS_OK) first_error = status;
  }
  pending.clear();
  if (timed_out) {
    lost = true;
    raise(ErrorKind::disconnected, peer, ": ", put ? "ucp_put" : "ucp_get",
          " did not complete within ", options.timeout.count(), " ms");
  }
  if (first_error != UCS_OK) {
    lost = true;
    ucx::throw_status(put ? "ucp_put_nbx" : "ucp_get_nbx", first_error);
  }
}

void RemoteKvStore::Impl::transfer_locked(const std::vector<Piece>& pieces, bool put) {
  ucs_status_t first_error = UCS_OK;
  std::vector<void*> pending = post_locked(pieces, put, first_error);
  complete_locked(pending, first_error, put);
}

void RemoteKvStore::Impl::reap_locked() {
  for (auto& entry : fetches) {
    auto& fetch = entry.second;  // a named reference: clang 14 cannot capture a structured binding
    std::erase_if(fetch.pending, [&](void* request) {
      const ucs_status_t status = ucp_request_check_status(request);
      if (status == UCS_INPROGRESS) return false;
      ucp_request_free(request);
      if (status != UCS_OK && fetch.status == UCS_OK) fetch.status = status;
      return true;
    });
  }
}

bool RemoteKvStore::Impl::fetches_in_flight_locked() const {
  for (const auto& [key, fetch] : fetches) {
    if (!fetch.pending.empty()) return true;
  }
  return false;
}

void RemoteKvStore::Impl::drain_fetches_locked(std::optional<SeqId> seq) {
  for (auto it = fetches.begin(); it != fetches.end();) {
    if (seq && it->first.seq != *seq) {
      ++it;
      continue;
    }
    try {
      complete_locked(it->second.pending, UCS_OK, false);
    } catch (const Error&) {  // the rows are not wanted any more; lost is already marked
    }
    it = fetches.erase(it);
  }
}

void RemoteKvStore::Impl::progress_loop() {
  std::unique_lock lock(mutex);
  while (!progress_stop) {
    if (!fetches_in_flight_locked()) {
      progress_wake.wait(lock);
      continue;
    }
    while (worker.progress() != 0) {
    }
    reap_locked();
    lock.unlock();
    std::this_thread::sleep_for(kProgressInterval);
    lock.lock();
  }
}

void RemoteKvStore::prefetch(std::span<const Range> ranges) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  if (s.fetches.size() + ranges.size() > kMaxFetches) s.drain_fetches_locked(std::nullopt);
  for (const Range& r : ranges) {
    const Sequence& q = s.find_locked(r.seq);
    if (r.layer < 0 || r.layer >= s.shape.n_layers) {
      fail(s.peer, ": prefetch of layer ", r.layer, " out of range");
    }
    if (r.t0 < 0 || r.t1 < r.t0 || r.t1 > q.reserved) {
      fail(s.peer, ": prefetch of token range [", r.t0, ", ", r.t1, ") outside the ", q.reserved,
           " reserved tokens of sequence ", r.seq);
    }
    // Same host: spans point into the daemon's memory, nothing to fetch. Else only committed
    // rows live at the daemon; reserved ones are this client's until commit.
    if (s.session->zero_copy) continue;
    const FetchKey key{r.seq, r.layer, r.part, r.t0, std::min(r.t1, q.length)};
    if (key.t0 >= key.t1 || s.fetches.contains(key)) continue;
    std::vector<Impl::Piece> pieces;
    s.add_pieces(pieces, q, r.layer, r.part, key.t0, key.t1);
    Fetch fetch;
    fetch.pending = s.post_locked(pieces, false, fetch.status);
    s.fetches.emplace(key, std::move(fetch));
  }
  s.progress_wake.notify_one();
}

std::vector<HostSpan> RemoteKvStore::locate(SeqId seq, std::int64_t layer, Part part,
                                            std::int64_t t0, std::int64_t t1) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  ++s.lookups;
  const Sequence& q = s.find_locked(seq);
  if (layer < 0 || layer >= s.shape.n_layers) fail(s.peer, ": layer ", layer, " out of range");
  if (t0 < 0 || t1 < t0 || t1 > q.reserved) {
    fail(s.peer, ": token range [", t0, ", ", t1, ") outside the ", q.reserved,
         " reserved tokens of sequence ", seq);
  }
  if (!s.session->zero_copy && t0 < q.length) {
    // Committed rows come from the daemon; reserved ones are this client's until commit. A
    // prefetch that covers them is waited for (only its gets still in flight); else fetch now.
    const FetchKey want{seq, layer, part, t0, std::min(t1, q.length)};
    auto covering = s.fetches.end();
    for (auto it = s.fetches.lower_bound({seq, layer, part, 0, 0});
         it != s.fetches.end() && it->first.seq == seq && it->first.layer == layer &&
         it->first.part == part && it->first.t0 <= want.t0;
         ++it) {
      if (it->first == want) {
        covering = it;
        break;
      }
      if (it->first.t1 >= want.t1) covering = it;
    }
    if (covering != s.fetches.end()) {
      Fetch& fetch = covering->second;
      const ucs_status_t status = std::exchange(fetch.status, UCS_OK);
      const bool exact = covering->first == want;
      try {
        s.complete_locked(fetch.pending, status, false);
      } catch (const Error&) {
        s.fetches.erase(covering);
        throw;
      }
      if (exact) s.fetches.erase(covering);  // a wider one may serve another range still
    } else {
      std::vector<Impl::Piece> pieces;
      s.add_pieces(pieces, q, layer, part, want.t0, want.t1);
      s.transfer_locked(pieces, false);
    }
  }
  return s.spans_locked(q, layer, part, t0, t1);
}

}  // namespace kvpr::kvstore
