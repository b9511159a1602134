#include "kvpr/kvstore/local_kv_store.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kvpr/common/error.h"

namespace kvpr::kvstore {

LocalKvStore::LocalKvStore(const StoreShape& shape, std::uint64_t capacity_bytes)
    : shape_(shape), capacity_bytes_(capacity_bytes) {
  if (shape.n_layers <= 0 || shape.h <= 0 || shape.h_kv <= 0 || shape.block_tokens <= 0) {
    fail("kvstore: invalid shape (layers ", shape.n_layers, ", h ", shape.h, ", h_kv ", shape.h_kv,
         ", block_tokens ", shape.block_tokens, ")");
  }
  n_blocks_ = static_cast<std::size_t>(capacity_bytes / shape.block_bytes());
  arena_bytes_ = n_blocks_ * shape.block_bytes();
  if (arena_bytes_ > 0) {
    void* p = mmap(nullptr, arena_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      raise(ErrorKind::overloaded, "kvstore: cannot map ", arena_bytes_,
            " bytes of host memory: ", std::strerror(errno));
    }
    arena_ = static_cast<std::byte*>(p);
  }
  free_blocks_.reserve(n_blocks_);
  for (std::size_t i = n_blocks_; i > 0; --i) free_blocks_.push_back(i - 1);
}

LocalKvStore::~LocalKvStore() {
  if (arena_ != nullptr) munmap(arena_, arena_bytes_);
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

std::byte* LocalKvStore::block_ptr(std::size_t block) const {
  return arena_ + block * shape_.block_bytes();
}

SeqId LocalKvStore::open() {
  std::lock_guard lock(mutex_);
  const SeqId id = next_id_++;
  sequences_[id].blocks.resize(static_cast<std::size_t>(shape_.n_layers));
  return id;
}

void LocalKvStore::reserve(SeqId seq, std::int64_t n_tokens) {
  if (n_tokens < 0) fail("kvstore: reserve of ", n_tokens, " tokens");
  std::lock_guard lock(mutex_);
  Sequence& s = find(seq);
  const std::int64_t bt = shape_.block_tokens;
  const std::int64_t target = std::max(s.reserved, s.length + n_tokens);
  const auto have = static_cast<std::size_t>((s.reserved + bt - 1) / bt);
  const auto need = static_cast<std::size_t>((target + bt - 1) / bt);
  const std::size_t per_layer = need - have;
  const std::size_t total = per_layer * static_cast<std::size_t>(shape_.n_layers);
  if (total > free_blocks_.size()) {
    ++allocation_failures_;
    raise(ErrorKind::overloaded, "kvstore: overloaded: sequence ", seq, " needs ", total,
          " more blocks (", total * shape_.block_bytes(), " bytes) for ", n_tokens,
          " tokens but only ", free_blocks_.size(), " of ", n_blocks_, " are free (capacity ",
          capacity_bytes_, " bytes)");
  }
  for (auto& layer_blocks : s.blocks) {
    for (std::size_t i = 0; i < per_layer; ++i) {
      layer_blocks.push_back(free_blocks_.back());
      free_blocks_.pop_back();
    }
  }
  s.reserved = target;
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
  const std::int64_t bt = shape_.block_tokens;
  const std::size_t row = shape_.row_bytes(part);
  std::size_t part_offset = 0;
  if (part != Part::act) part_offset += static_cast<std::size_t>(bt) * shape_.row_bytes(Part::act);
  if (part == Part::v) part_offset += static_cast<std::size_t>(bt) * shape_.row_bytes(Part::k);
  std::vector<HostSpan> spans;
  const auto& blocks = s.blocks[static_cast<std::size_t>(layer)];
  for (std::int64_t t = t0; t < t1;) {
    const std::int64_t b = t / bt;
    const std::int64_t in_block = t % bt;
    const std::int64_t n = std::min(bt - in_block, t1 - t);
    std::byte* base = block_ptr(blocks[static_cast<std::size_t>(b)]) + part_offset;
    spans.push_back({base + static_cast<std::size_t>(in_block) * row, t, n});
    t += n;
  }
  return spans;
}

void LocalKvStore::commit(SeqId seq, std::int64_t n_tokens) {
  std::lock_guard lock(mutex_);
  Sequence& s = find(seq);
  if (n_tokens < 0 || s.length + n_tokens > s.reserved) {
    fail("kvstore: commit of ", n_tokens, " tokens to sequence ", seq, " with ", s.length,
         " committed and ", s.reserved, " reserved");
  }
  s.length += n_tokens;
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
  const std::int64_t bt = shape_.block_tokens;
  const auto keep = static_cast<std::size_t>((n_tokens + bt - 1) / bt);
  for (auto& layer_blocks : s.blocks) {
    while (layer_blocks.size() > keep) {
      free_blocks_.push_back(layer_blocks.back());
      layer_blocks.pop_back();
    }
  }
  s.length = n_tokens;
  s.reserved = std::min(s.reserved, static_cast<std::int64_t>(keep) * bt);
}

void LocalKvStore::free(SeqId seq) {
  std::lock_guard lock(mutex_);
  Sequence& s = find(seq);
  for (auto& layer_blocks : s.blocks) {
    free_blocks_.insert(free_blocks_.end(), layer_blocks.begin(), layer_blocks.end());
  }
  sequences_.erase(seq);
}

StoreStats LocalKvStore::stats() const {
  std::lock_guard lock(mutex_);
  StoreStats st;
  st.capacity_bytes = capacity_bytes_;
  st.used_bytes = (n_blocks_ - free_blocks_.size()) * shape_.block_bytes();
  st.sequences = sequences_.size();
  st.lookups = lookups_;
  st.allocation_failures = allocation_failures_;
  return st;
}

}  // namespace kvpr::kvstore
