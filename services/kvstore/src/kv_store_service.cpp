// KvStoreService's lifecycle: the exported arena, the router and progress threads, leases and
// metrics. The request path itself is in service_handle.cpp.
#include "kvpr/common/error.h"
#include "kvpr/net/service.h"
#include "service_impl.h"

namespace kvpr::kvstore {
namespace {

constexpr net::milliseconds kPoll{50};  // router wake-up: lease checks and stop requests

}  // namespace

ServiceInstruments::ServiceInstruments(prometheus::Registry& registry)
    : capacity_bytes(prometheus::BuildGauge()
                         .Name("kvpr_kvstore_capacity_bytes")
                         .Help("Bytes of host memory the kvstore can hand out")
                         .Register(registry)
                         .Add({})),
      used_bytes(prometheus::BuildGauge()
                     .Name("kvpr_kvstore_used_bytes")
                     .Help("Bytes of the arena held by sequences (whole pages)")
                     .Register(registry)
                     .Add({})),
      metadata_bytes(prometheus::BuildGauge()
                         .Name("kvpr_kvstore_metadata_bytes")
                         .Help("Bytes of client and sequence tables, counted against capacity")
                         .Register(registry)
                         .Add({})),
      sequences(prometheus::BuildGauge()
                    .Name("kvpr_kvstore_sequences")
                    .Help("Open sequences over all clients")
                    .Register(registry)
                    .Add({})),
      clients(prometheus::BuildGauge()
                  .Name("kvpr_kvstore_clients")
                  .Help("Registered clients with a live lease")
                  .Register(registry)
                  .Add({})),
      lookups(prometheus::BuildCounter()
                  .Name("kvpr_kvstore_lookups_total")
                  .Help("Locate requests answered (clients locate from their own block tables)")
                  .Register(registry)
                  .Add({})),
      allocation_failures(prometheus::BuildCounter()
                              .Name("kvpr_kvstore_allocation_failures_total")
                              .Help("Reserve requests answered overloaded: the arena was full")
                              .Register(registry)
                              .Add({})),
      lease_expiries(prometheus::BuildCounter()
                         .Name("kvpr_kvstore_lease_expiries_total")
                         .Help("Clients whose lease ran out; their sequences were freed")
                         .Register(registry)
                         .Add({})),
      evictions(prometheus::BuildCounter()
                    .Name("kvpr_kvstore_evictions_total")
                    .Help("Sequences evicted to make room (always 0: live data is never dropped)")
                    .Register(registry)
                    .Add({})),
      requests(prometheus::BuildCounter()
                   .Name("kvpr_kvstore_requests_total")
                   .Help("Requests decoded, by type")
                   .Register(registry)) {}

KvStoreService::Impl::Impl(zmq::context_t& context_in, KvStoreServiceOptions options_in)
    : context(context_in), options(std::move(options_in)) {
  if (options.page_bytes == 0) fail("kvstore: page size of 0 bytes");
  if (options.capacity_bytes < options.page_bytes) {
    fail("kvstore: capacity of ", options.capacity_bytes, " bytes is less than one page of ",
         options.page_bytes, " bytes");
  }
  if (options.lease.count() <= 0) fail("kvstore: lease of ", options.lease.count(), " ms");
  ucx_context = ucx::Context(UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP, options.endpoint);
  worker = ucx::Worker(ucx_context, UCS_THREAD_MODE_SERIALIZED);
  worker_address = ucx::WorkerAddress(worker);
  const std::size_t arena_bytes =
      static_cast<std::size_t>(options.capacity_bytes / options.page_bytes) * options.page_bytes;
  memory = ucx::MemoryMap(ucx_context, arena_bytes);
  rkey = ucx::RkeyBuffer(ucx_context, memory);
  pool = std::make_unique<PagePool>(memory.address(), arena_bytes, options.page_bytes);
  metrics = std::make_unique<net::Metrics>(options.metrics_port, options.metrics_host);
  instruments = std::make_unique<ServiceInstruments>(metrics->registry());
  instruments->capacity_bytes.Set(static_cast<double>(pool->capacity_bytes()));
  for (const char* reason : {"malformed", "unknown_type", "invalid", "expired", "unauthenticated",
                             "permission_denied", "quota"}) {
    metrics->rejected(reason);  // every series exists from the start, at 0
  }
}

KvStoreService::Impl::~Impl() = default;

void KvStoreService::Impl::reject(const std::string& reason) {
  metrics->rejected(reason).Increment();
  rejected.fetch_add(1);
}

void KvStoreService::Impl::refresh_gauges_locked() {
  std::uint64_t n_sequences = 0;
  for (const auto& [id, client] : clients) n_sequences += client.store->stats().sequences;
  instruments->used_bytes.Set(
      static_cast<double>(pool->used_bytes() - metadata_page_bytes_locked()));
  instruments->metadata_bytes.Set(static_cast<double>(metadata_bytes));
  instruments->sequences.Set(static_cast<double>(n_sequences));
  instruments->clients.Set(static_cast<double>(clients.size()));
}

KvStoreServiceStats KvStoreService::Impl::stats_locked() const {
  KvStoreServiceStats st;
  st.capacity_bytes = pool->capacity_bytes();
  st.used_bytes = pool->used_bytes() - metadata_page_bytes_locked();
  st.metadata_bytes = metadata_bytes;
  for (const auto& [id, client] : clients) st.sequences += client.store->stats().sequences;
  st.clients = clients.size();
  st.lookups = lookups;
  st.allocation_failures = pool->allocation_failures();
  st.lease_expiries = lease_expiries;
  st.rejected_messages = rejected.load();
  st.requests = requests;
  return st;
}

void KvStoreService::Impl::expire_leases() {
  std::lock_guard lock(mutex);
  const auto now = net::Clock::now();
  bool changed = false;
  for (auto it = clients.begin(); it != clients.end();) {
    if (it->second.lease_end < now) {
      erase_client_locked(it++);
      ++lease_expiries;
      instruments->lease_expiries.Increment();
      changed = true;
    } else {
      ++it;
    }
  }
  if (changed) refresh_gauges_locked();
}

void KvStoreService::Impl::route() {
  net::ServeLoop loop;
  loop.name = "kvstore";
  loop.poll = kPoll;
  loop.stopping = [&] { return stopping.load(); };
  loop.tick = [&] { expire_leases(); };
  loop.answer = [&](net::Router::Request& request) {
    if (request.malformed.empty()) {
      return handle(request.payload.data(), request.payload.size(), request.principal);
    }
    reject("malformed");
    return error_reply(0, net::MalformedMessage(request.malformed));
  };
  net::serve(*router, loop);
}

void KvStoreService::Impl::progress() {
  while (!progress_stop.load()) {
    if (worker.progress() != 0) continue;
    const ucs_status_t status = ucp_worker_arm(worker.get());
    if (status == UCS_ERR_BUSY) continue;  // more events arrived meanwhile
    if (progress_stop.load()) break;
    if (status == UCS_OK) {
      ucp_worker_wait(worker.get());  // until an event or ucp_worker_signal from stop()
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

// --- KvStoreService --------------------------------------------------------------------------

KvStoreService::KvStoreService(zmq::context_t& context, KvStoreServiceOptions options)
    : impl_(std::make_unique<Impl>(context, std::move(options))) {}

KvStoreService::~KvStoreService() {
  stop();
}

void KvStoreService::start() {
  Impl& s = *impl_;
  if (s.started) return;
  s.router = std::make_unique<net::Router>(s.context, s.options.endpoint,
                                           [&s] { s.reject("unauthenticated"); });
  s.endpoint = s.router->endpoint();
  s.stopping = false;
  s.progress_stop = false;
  s.progress_thread = std::thread([&s] { s.progress(); });
  s.router_thread = std::thread([&s] { s.route(); });
  s.started = true;
}

void KvStoreService::stop() {
  Impl& s = *impl_;
  if (!s.started) return;
  s.stopping = true;
  s.router_thread.join();
  s.progress_stop = true;
  ucp_worker_signal(s.worker.get());
  s.progress_thread.join();
  s.router.reset();
  s.started = false;
}

const std::string& KvStoreService::endpoint() const {
  return impl_->endpoint;
}
int KvStoreService::metrics_port() const {
  return impl_->metrics->port();
}
const KvStoreServiceOptions& KvStoreService::options() const {
  return impl_->options;
}
net::Metrics& KvStoreService::metrics() {
  return *impl_->metrics;
}
void* KvStoreService::arena() const {
  return impl_->pool->arena();
}
std::size_t KvStoreService::arena_bytes() const {
  return impl_->pool->arena_bytes();
}

KvStoreServiceStats KvStoreService::stats() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stats_locked();
}

zmq::message_t KvStoreService::handle(const void* data, std::size_t size,
                                      std::string_view principal) {
  return impl_->handle(data, size, principal);
}

}  // namespace kvpr::kvstore
