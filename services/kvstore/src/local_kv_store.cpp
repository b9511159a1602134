#include "kvpr/kvstore/local_kv_store.h"

#include <algorithm>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/block_layout.h"

namespace kvpr::kvstore {
namespace {

void check_shape(const StoreShape& shape) {
  if (shape.n_layers <= 0 || shape.h <= 0 || shape.h_kv <= 0 || shape.block_tokens <= 0) {
    fail("kvstore: invalid shape (layers ", shape.n_layers, ", h ", shape.h, ", h_kv ", shape.h_kv,
         ", block_tokens ", shape.block_tokens, ")");
  }
}

}  // namespace

LocalKvStore::LocalKvStore(const StoreShape& shape, std::uint64_t capacity_bytes) : shape_(shape) {
  check_shape(shape);
  owned_pool_ = std::make_unique<PagePool>(shape.block_bytes(), capacity_bytes);
  pool_ = owned_pool_.get();
}

LocalKvStore::LocalKvStore(const StoreShape& shape, PagePool& pool) : shape_(shape), pool_(&pool) {
  check_shape(shape);
  if (shape.block_bytes() > pool.page_bytes()) {
    fail("kvstore: a block of ", shape.block_tokens, " tokens (", shape.block_bytes(),
         " bytes) does not fit a page of ", pool.page_bytes(), " bytes");
  }
}

LocalKvStore::~LocalKvStore() {
  for (auto& [id, s] : sequences_) release(s);
}

LocalKvStore::Sequence& LocalKvStore::find(SeqId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) fail("kvstore: unknown sequence ", seq);
  return it->second;
}

const LocalKvStore::Sequence& LocalKvStore::find(SeqId seq) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) fail("kvstore: unknown sequence ", seq);
  return it->second;
}

void LocalKvStore::release(Sequence& s) {
  for (auto& layer_blocks : s.blocks) {
    pool_->release(layer_blocks);
    pages_held_ -= layer_blocks.size();
    layer_blocks.clear();
  }
}

SeqId LocalKvStore::open() {
  std::lock_guard lock(mutex_);
  const SeqId id = pool_->next_sequence_id();
  sequences_[id].blocks.resize(static_cast<std::size_t>(shape_.n_layers));
  return id;
}

std::vector<Reservation> LocalKvStore::reserve_blocks(std::span<const SeqId> seqs,
                                                      std::int64_t n_tokens) {
  check_batch("reserve", seqs, n_tokens, kMaxTokens);
  std::lock_guard lock(mutex_);
  // Every sequence's share first, then one allocation for the whole batch: all or nothing.
  std::vector<Sequence*> found;
  std::vector<Reservation> out(seqs.size());
  std::size_t total = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = find(seqs[i]);
    found.push_back(&s);
    Reservation& r = out[i];
    r.reserved_tokens = std::max(s.reserved, s.length + n_tokens);
    r.first_block = blocks_for(shape_, s.reserved);
    r.blocks_per_layer = blocks_for(shape_, r.reserved_tokens) - r.first_block;
    total += static_cast<std::size_t>(r.blocks_per_layer * shape_.n_layers);
  }
  if (total > page_quota_ - std::min(page_quota_, pages_held_)) {
    throw QuotaExceeded(str("kvstore: over quota: ", seqs.size(), " sequence(s) need ", total,
                            " more blocks for ", n_tokens, " tokens each; this client holds ",
                            pages_held_, " of its quota of ", page_quota_, " pages"));
  }
  std::vector<std::size_t> pages;
  if (!pool_->allocate(total, pages)) {
    ++allocation_failures_;
    raise(ErrorKind::overloaded, "kvstore: overloaded: ", seqs.size(), " sequence(s) need ", total,
          " more blocks (", total * pool_->page_bytes(), " bytes) for ", n_tokens,
          " tokens each but only ", pool_->free_pages(), " of ", pool_->n_pages(),
          " are free (capacity ", pool_->capacity_bytes(), " bytes)");
  }
  std::size_t next = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *found[i];
    Reservation& r = out[i];
    r.offsets.reserve(static_cast<std::size_t>(r.blocks_per_layer * shape_.n_layers));
    for (auto& layer_blocks : s.blocks) {
      for (std::int64_t b = 0; b < r.blocks_per_layer; ++b) {
        layer_blocks.push_back(pages[next]);
        r.offsets.push_back(pool_->offset_of_page(pages[next]));
        ++next;
      }
    }
    s.reserved = r.reserved_tokens;
  }
  pages_held_ += total;
  return out;
}

void LocalKvStore::set_page_quota(std::size_t pages) {
  std::lock_guard lock(mutex_);
  page_quota_ = pages;
}

std::vector<HostSpan> LocalKvStore::locate(SeqId seq, std::int64_t layer, Part part,
                                           std::int64_t t0, std::int64_t t1) {
  std::lock_guard lock(mutex_);
  ++lookups_;
  Sequence& s = find(seq);
  if (layer < 0 || layer >= shape_.n_layers) fail("kvstore: layer ", layer, " out of range");
  if (t0 < 0 || t1 < t0 || t1 > s.reserved) {
    fail("kvstore: token range [", t0, ", ", t1, ") outside the ", s.reserved,
         " reserved tokens of sequence ", seq);
  }
  const auto& blocks = s.blocks[static_cast<std::size_t>(layer)];
  return spans_of(shape_, part, t0, t1,
                  [&](std::int64_t b) { return pool_->page(blocks[static_cast<std::size_t>(b)]); });
}

void LocalKvStore::commit(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("commit", seqs, n_tokens, kMaxTokens);
  std::lock_guard lock(mutex_);
  std::vector<Sequence*> found;
  for (const SeqId seq : seqs) {
    Sequence& s = find(seq);
    if (n_tokens > s.reserved - s.length) {
      fail("kvstore: commit of ", n_tokens, " tokens to sequence ", seq, " with ", s.length,
           " committed and ", s.reserved, " reserved");
    }
    found.push_back(&s);
  }
  for (Sequence* s : found) s->length += n_tokens;
}

void LocalKvStore::commit_in_blocks(std::span<const SeqId> seqs, std::int64_t n_tokens) {
  check_batch("commit", seqs, n_tokens, kMaxTokens);
  std::lock_guard lock(mutex_);
  std::vector<Sequence*> found;
  for (const SeqId seq : seqs) {
    Sequence& s = find(seq);
    const auto held = static_cast<std::int64_t>(s.blocks.front().size()) * shape_.block_tokens;
    if (n_tokens > held - s.length) {
      fail("kvstore: commit of ", n_tokens, " tokens to sequence ", seq, " with ", s.length,
           " committed and blocks for ", held);
    }
    found.push_back(&s);
  }
  for (Sequence* s : found) {
    s->length += n_tokens;
    s->reserved = std::max(s->reserved, s->length);
  }
}

std::int64_t LocalKvStore::length(SeqId seq) const {
  std::lock_guard lock(mutex_);
  return find(seq).length;
}

void LocalKvStore::truncate(SeqId seq, std::int64_t n_tokens) {
  std::lock_guard lock(mutex_);
  Sequence& s = find(seq);
  if (n_tokens < 0 || n_tokens > s.length) {
    fail("kvstore: truncate of sequence ", seq, " to ", n_tokens, " tokens; it has ", s.length);
  }
  const auto keep = static_cast<std::size_t>(blocks_for(shape_, n_tokens));
  std::vector<std::size_t> dropped;
  for (auto& layer_blocks : s.blocks) {
    if (layer_blocks.size() <= keep) continue;
    dropped.insert(dropped.end(), layer_blocks.begin() + static_cast<std::ptrdiff_t>(keep),
                   layer_blocks.end());
    layer_blocks.resize(keep);
  }
  pool_->release(dropped);
  pages_held_ -= dropped.size();
  s.length = n_tokens;
  s.reserved = std::min(s.reserved, static_cast<std::int64_t>(keep) * shape_.block_tokens);
}

void LocalKvStore::free(SeqId seq) {
  std::lock_guard lock(mutex_);
  Sequence& s = find(seq);
  release(s);
  sequences_.erase(seq);
}

StoreStats LocalKvStore::stats() const {
  std::lock_guard lock(mutex_);
  StoreStats st;
  st.capacity_bytes = pool_->capacity_bytes();
  st.used_bytes = pages_held_ * pool_->page_bytes();
  st.sequences = sequences_.size();
  st.lookups = lookups_;
  st.allocation_failures = allocation_failures_;
  return st;
}

}  // namespace kvpr::kvstore
