// KvStoreService's clients: who owns which sequence, and how much each client may make the daemon
// hold. Called by the wire adapter (service_handle.cpp) with mutex held.
//
// Refusals never say whether a handle exists for someone else: an unknown client handle and one
// registered by another principal get the same permission_denied message, and so do an unknown
// sequence and another client's sequence.
//
// Metadata (the client record, and per sequence its entries in the maps and one block-table
// vector per layer) lives on the heap, not in the arena; it is counted against the capacity by
// holding ceil(metadata / page_bytes) pages of the pool that no sequence can then have, so pages
// of data plus metadata never pass capacity_bytes. The block-table entries themselves (8 bytes a
// page) are bounded by the arena and are not counted.
#include <algorithm>

#include "kvpr/common/error.h"
#include "service_impl.h"

namespace kvpr::kvstore {
namespace {

using Impl = KvStoreService::Impl;

// What a client record costs: the Client, its LocalKvStore view, the map nodes and a name of up to
// 256 bytes (rounded up, so a flood of registrations is charged what it holds).
constexpr std::uint64_t kClientRecordBytes = 1024;
// Per sequence besides its per-layer vectors: a node in the client's handle map and one in the
// view's sequence map, with their payloads.
constexpr std::uint64_t kSequenceRecordBytes = 256;

[[noreturn]] void refuse(std::string_view op, std::string_view what) {
  raise(ErrorKind::permission_denied, "kvstore: ", op, " refused: ", what);
}

}  // namespace

Impl::Client& Impl::client_locked(Capability handle, std::string_view principal,
                                  std::string_view op) {
  auto it = clients.find(handle);
  if (it == clients.end() || it->second.principal != principal) {
    refuse(op,
           "unknown client (never registered by this caller, lease expired or the daemon "
           "restarted): register again");
  }
  return it->second;
}

SeqId Impl::sequence_locked(const Client& client, Capability seq, std::string_view op) const {
  auto it = client.sequences.find(seq);
  if (it == client.sequences.end()) refuse(op, "no such sequence of this client");
  return it->second;
}

std::uint64_t Impl::sequence_metadata_bytes(const StoreShape& shape) {
  return kSequenceRecordBytes +
         static_cast<std::uint64_t>(shape.n_layers) * sizeof(std::vector<std::size_t>);
}

std::uint64_t Impl::metadata_page_bytes_locked() const {
  return static_cast<std::uint64_t>(metadata_pages.size()) * pool->page_bytes();
}

void Impl::charge_locked(Client& client, std::int64_t bytes) {
  if (bytes > 0) {
    const auto add = static_cast<std::uint64_t>(bytes);
    const std::uint64_t quota = options.max_metadata_bytes_per_client;
    if (quota != 0 && client.metadata_bytes + add > quota) {
      throw QuotaExceeded(str("kvstore: over quota: client '", client.name, "' holds ",
                              client.metadata_bytes, " bytes of tables and needs ", add,
                              " more; its quota is ", quota, " bytes"));
    }
  }
  const std::uint64_t total = metadata_bytes + static_cast<std::uint64_t>(bytes);
  const std::size_t page = pool->page_bytes();
  const auto need = static_cast<std::size_t>((total + page - 1) / page);
  if (need > metadata_pages.size()) {
    if (!pool->allocate(need - metadata_pages.size(), metadata_pages)) {
      raise(ErrorKind::overloaded, "kvstore: overloaded: ", total,
            " bytes of client and sequence tables would pass the capacity of ",
            pool->capacity_bytes(), " bytes (", pool->free_pages(), " of ", pool->n_pages(),
            " pages free)");
    }
  } else if (need < metadata_pages.size()) {
    const std::vector<std::size_t> spare(metadata_pages.begin() + static_cast<std::ptrdiff_t>(need),
                                         metadata_pages.end());
    metadata_pages.resize(need);
    pool->release(spare);
  }
  metadata_bytes = total;
  client.metadata_bytes += static_cast<std::uint64_t>(bytes);
}

std::uint32_t Impl::host_share_locked(const Client& client) const {
  const std::uint32_t budget = options.host_threads;
  if (budget == 0 || client.host_threads == 0) return client.host_threads;
  std::uint64_t asked = 0;
  for (const auto& [handle, c] : clients) asked += c.host_threads;
  if (asked <= budget) return client.host_threads;
  const std::uint64_t share = std::uint64_t{budget} * client.host_threads / asked;
  return static_cast<std::uint32_t>(std::max<std::uint64_t>(share, 1));
}

Capability Impl::add_client_locked(Client client) {
  Capability handle = random_capability();
  while (clients.count(handle) != 0) handle = random_capability();
  charge_locked(client, static_cast<std::int64_t>(kClientRecordBytes));
  clients.emplace(handle, std::move(client));
  return handle;
}

void Impl::erase_client_locked(Clients::iterator it) {
  Client& client = it->second;
  const auto held = static_cast<std::int64_t>(client.metadata_bytes);
  charge_locked(client, -held);
  clients.erase(it);  // the view's destructor returns its pages
}

Capability Impl::open_locked(Client& client) {
  const std::uint64_t cap = options.max_sequences_per_client;
  if (cap != 0 && client.sequences.size() >= cap) {
    throw QuotaExceeded(str("kvstore: over quota: client '", client.name, "' has ",
                            client.sequences.size(), " open sequences, its quota"));
  }
  const std::uint64_t bytes = sequence_metadata_bytes(client.store->shape());
  charge_locked(client, static_cast<std::int64_t>(bytes));
  Capability handle = random_capability();
  while (client.sequences.count(handle) != 0) handle = random_capability();
  try {
    client.sequences.emplace(handle, client.store->open());
  } catch (...) {
    charge_locked(client, -static_cast<std::int64_t>(bytes));
    throw;
  }
  return handle;
}

void Impl::free_locked(Client& client, Capability seq, std::string_view op) {
  const SeqId id = sequence_locked(client, seq, op);
  client.store->free(id);
  client.sequences.erase(seq);
  charge_locked(client, -static_cast<std::int64_t>(sequence_metadata_bytes(client.store->shape())));
}

}  // namespace kvpr::kvstore
