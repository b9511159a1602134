// RemoteKvStore against an in-process KvStoreService on tcp://127.0.0.1:0. Built twice: as
// kvstore_remote_test (UCX picks shared memory: spans point into the daemon's arena, zero copy)
// and as kvstore_remote_tcp_test (UCX_TLS=tcp before any UCX context: the path of a client on
// another host, with a mirror, ucp_get on locate and ucp_put on commit). Both must give the same
// bytes and the same semantics as LocalKvStore.
#include "kvpr/kvstore/remote_kv_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "../slowdown.h"
#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvpr/net/metrics.h"
#include "kvstore_test_support.h"
#include "service_test_support.h"

namespace kvpr::kvstore {
namespace {

#ifdef KVPR_TEST_UCX_TLS_TCP
// Runs before main(), so before any UCX context of this process reads its configuration.
const int kForceTcp = [] { return setenv("UCX_TLS", "tcp", 1); }();
constexpr bool kExpectZeroCopy = false;
#define RemoteKvStoreTest RemoteKvStoreTcpTest  // distinct CTest names for the two builds
#else
constexpr bool kExpectZeroCopy = true;
#endif

using std::chrono::milliseconds;
using testing::count_bad_rows;
using testing::fill;
using testing::metric;
using testing::pattern;
using testing::small_shape;

constexpr std::size_t kPage = 1024;  // small_shape: 64 bytes per token and layer -> 16 tokens

class RemoteKvStoreTest : public ::testing::Test {
 protected:
  void start(std::uint64_t capacity = 1 << 20, milliseconds lease = milliseconds(10000),
             std::uint32_t host_threads = 0) {
    KvStoreServiceOptions options;
    options.capacity_bytes = capacity;
    options.page_bytes = kPage;
    options.lease = lease;
    options.host_threads = host_threads;
    service_ = std::make_unique<KvStoreService>(context_, options);
    service_->start();
  }

  RemoteKvStoreOptions client_options(const std::string& name) {
    RemoteKvStoreOptions options;
    options.endpoint = service_->endpoint();
    options.name = name;
    options.timeout = milliseconds(2000);
    return options;
  }

  std::unique_ptr<RemoteKvStore> client(const std::string& name = "test") {
    return std::make_unique<RemoteKvStore>(context_, small_shape(), client_options(name));
  }

  zmq::context_t context_;
  std::unique_ptr<KvStoreService> service_;
};

TEST_F(RemoteKvStoreTest, BehavesLikeLocalKvStore) {
  start();
  auto remote_store = client();
  RemoteKvStore& remote = *remote_store;
  EXPECT_EQ(remote.zero_copy(), kExpectZeroCopy);
  EXPECT_EQ(remote.generation(), 1u);
  EXPECT_EQ(remote.shape().block_tokens, 16);
  EXPECT_GE(remote.arena_bytes(), std::size_t{1} << 19);
  LocalKvStore local(remote.shape(), 1 << 20);

  for (KvStoreClient* store : std::vector<KvStoreClient*>{&local, &remote}) {
    SCOPED_TRACE(store == &local ? "local" : "remote");
    const SeqId a = store->open();
    const SeqId b = store->open();
    store->reserve(a, 40);
    store->reserve(b, 3);
    store->reserve(a, 40);  // idempotent
    fill(*store, a, 0, 40, 1);
    fill(*store, b, 0, 3, 2);
    store->commit(a, 40);
    store->commit(b, 3);
    EXPECT_EQ(store->length(a), 40);
    const auto spans = store->locate(a, 1, Part::v, 13, 35);  // [13,16) [16,32) [32,35)
    ASSERT_EQ(spans.size(), 3u);
    EXPECT_EQ(spans[0].n_tokens, 3);
    EXPECT_EQ(spans[1].t0, 16);
    EXPECT_EQ(spans[2].n_tokens, 3);
    EXPECT_EQ(count_bad_rows(*store, a, 0, 40, 1), 0);
    EXPECT_EQ(count_bad_rows(*store, b, 0, 3, 2), 0);
    EXPECT_EQ(store->stats().used_bytes, (2u * 3 + 2u * 1) * kPage);

    store->truncate(a, 17);  // keeps blocks [0,16) [16,32)
    EXPECT_EQ(store->length(a), 17);
    EXPECT_EQ(store->stats().used_bytes, (2u * 2 + 2u * 1) * kPage);
    EXPECT_EQ(count_bad_rows(*store, a, 0, 17, 1), 0);
    store->reserve(a, 20);
    fill(*store, a, 17, 37, 1);
    store->commit(a, 20);
    EXPECT_EQ(count_bad_rows(*store, a, 0, 37, 1), 0);
    EXPECT_EQ(count_bad_rows(*store, b, 0, 3, 2), 0);

    EXPECT_THROW(store->commit(a, 100), Error);
    EXPECT_THROW(store->locate(a, 0, Part::k, 0, 49), Error);  // past the reservation
    EXPECT_THROW(store->locate(a, 2, Part::k, 0, 1), Error);   // no layer 2
    EXPECT_THROW(store->locate(a, 0, Part::k, 5, 4), Error);
    EXPECT_THROW(store->truncate(a, 38), Error);
    EXPECT_THROW(store->reserve(a, -1), Error);
    EXPECT_THROW(store->length(99), Error);
    EXPECT_THROW(store->free(99), Error);
    store->free(a);
    store->free(b);
    EXPECT_EQ(store->stats().used_bytes, 0u);
    EXPECT_EQ(store->stats().sequences, 0u);
  }
}

TEST_F(RemoteKvStoreTest, RowsReachTheDaemonAndItsLocateAgreesWithTheClientsTable) {
  start();
  auto a = client("a");
  auto b = client("b");
  const SeqId sa = a->open();
  const SeqId sb = b->open();
  a->reserve(sa, 20);
  b->reserve(sb, 20);
  fill(*a, sa, 0, 20, 1);
  fill(*b, sb, 0, 20, 2);
  a->commit(sa, 20);
  b->commit(sb, 20);

  const auto& shape = a->shape();
  const auto* daemon = static_cast<const std::byte*>(service_->arena());
  for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (Part part : {Part::act, Part::k, Part::v}) {
      const auto mine = a->locate(sa, layer, part, 3, 20);
      const auto theirs = a->locate_at_daemon(sa, layer, part, 3, 20);
      ASSERT_EQ(mine.size(), theirs.size());
      for (std::size_t i = 0; i < mine.size(); ++i) {
        EXPECT_EQ(mine[i].data, theirs[i].data);
        EXPECT_EQ(mine[i].t0, theirs[i].t0);
        EXPECT_EQ(mine[i].n_tokens, theirs[i].n_tokens);
        // The committed rows are in the daemon's own memory, whichever way they travelled.
        const auto offset =
            static_cast<std::size_t>(mine[i].data - static_cast<std::byte*>(a->arena()));
        float first = 0;
        std::memcpy(&first, daemon + offset, sizeof first);
        EXPECT_EQ(first, pattern(mine[i].t0, layer, part, 0, 1));
      }
    }
  }
  EXPECT_EQ(count_bad_rows(*b, sb, 0, 20, 2), 0);  // the other client's rows are intact

  // Every locate reads the daemon's current rows (a fresh ucp_get on the tcp path).
  const auto span = a->locate_at_daemon(sa, 1, Part::k, 5, 6).at(0);
  const auto offset = static_cast<std::size_t>(span.data - static_cast<std::byte*>(a->arena()));
  const float changed = -1.5f;
  std::memcpy(static_cast<std::byte*>(service_->arena()) + offset, &changed, sizeof changed);
  float seen = 0;
  std::memcpy(&seen, a->locate(sa, 1, Part::k, 5, 6).at(0).data, sizeof seen);
  EXPECT_EQ(seen, changed);

  // Sequences belong to their client.
  EXPECT_THROW(b->locate_at_daemon(sa, 0, Part::act, 0, 1), Error);
  EXPECT_EQ(service_->stats().clients, 2u);
  EXPECT_EQ(service_->stats().sequences, 2u);
}

TEST_F(RemoteKvStoreTest, FullStoreAnswersOverloadedWithTheNumbersAndKeepsLiveData) {
  // 11 pages: 3 hold the tables of two clients and two sequences (metadata counts against the
  // capacity), 8 are left for rows.
  start(11 * kPage + 100);
  auto a = client("a");
  auto b = client("b");
  const SeqId sa = a->open();
  a->reserve(sa, 64);  // 2 layers x 4 blocks: every page
  fill(*a, sa, 0, 64, 1);
  a->commit(sa, 64);
  const SeqId sb = b->open();
  try {
    b->reserve(sb, 1);
    FAIL() << "reserve past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
    EXPECT_NE(std::string(e.what()).find("0 of 11"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 more blocks"), std::string::npos) << e.what();
  }
  EXPECT_EQ(count_bad_rows(*a, sa, 0, 64, 1), 0);
  EXPECT_EQ(service_->stats().allocation_failures, 1u);
  EXPECT_EQ(service_->stats().rejected_messages, 0u);  // a full store is not a bad message
  auto& registry = service_->metrics().registry();
  EXPECT_EQ(metric(registry, "kvpr_kvstore_allocation_failures_total"), 1.0);
  EXPECT_EQ(metric(registry, "kvpr_kvstore_used_bytes"), 8.0 * kPage);
  EXPECT_EQ(metric(registry, "kvpr_kvstore_capacity_bytes"), 11.0 * kPage);
  EXPECT_EQ(service_->stats().used_bytes + 3 * kPage, service_->stats().capacity_bytes);
  EXPECT_EQ(metric(registry, "kvpr_kvstore_evictions_total"), 0.0);
  a->free(sa);
  b->reserve(sb, 1);  // the memory came back
  EXPECT_EQ(metric(registry, "kvpr_kvstore_used_bytes"), 2.0 * kPage);
}

// A decode step of a batch: reserve 1 token for every sequence, write, commit. The client keeps the
// block tables, so the step costs the daemon one request (the batch's commit) while the blocks
// suffice and two when they run out; never one per sequence.
TEST_F(RemoteKvStoreTest, BatchStepsCostOneRoundTripAndNoneForReservesTheBlocksCover) {
  start();
  auto store = client();
  std::vector<SeqId> batch;
  for (int i = 0; i < 4; ++i) batch.push_back(store->open());
  const auto requests = [&] { return service_->stats().requests; };
  for (std::int64_t t = 0; t < 40; ++t) {  // 16 tokens a block: new blocks at 0, 16 and 32
    const auto before = requests();
    store->reserve(batch, 1);
    EXPECT_EQ(requests() - before, t % 16 == 0 ? 1u : 0u) << "step " << t;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      fill(*store, batch[i], t, t + 1, static_cast<int>(i));
    }
    const auto written = requests();
    store->commit(batch, 1);
    EXPECT_EQ(requests() - written, 1u) << "step " << t;
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    EXPECT_EQ(store->length(batch[i]), 40);
    EXPECT_EQ(count_bad_rows(*store, batch[i], 0, 40, static_cast<int>(i)), 0);
  }
  // What the daemon holds agrees: 3 blocks in each of 2 layers per sequence.
  EXPECT_EQ(service_->stats().used_bytes, 4u * 3 * 2 * kPage);
}

// All or nothing through the daemon: two sequences that fit one at a time but not together.
TEST_F(RemoteKvStoreTest, BatchReserveThatDoesNotFitReservesNothing) {
  start(8 * kPage + 100);
  auto store = client();
  const std::vector<SeqId> both{store->open(), store->open()};
  try {
    store->reserve(both, 48);  // 3 blocks in each of 2 layers, each: 12 of 8 pages
    FAIL() << "a batch past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
  }
  EXPECT_EQ(service_->stats().used_bytes, 0u);
  EXPECT_THROW(store->locate(both[0], 0, Part::act, 0, 1), Error);  // no blocks here either
  const std::vector<SeqId> twice{both[0], both[0]};
  EXPECT_THROW(store->reserve(twice, 1), Error);
  store->reserve(both, 16);  // 1 block each per layer: 4 pages
  EXPECT_EQ(service_->stats().used_bytes, 4 * kPage);
}

// prefetch() then locate() gives the bytes locate() alone gives. Across hosts (the tcp build) the
// mirror's copy of the committed rows is scribbled over first, so only the prefetched gets can
// put the right bytes back; a prefetch wider than the located range serves it too, and a sequence
// freed with prefetches in flight is freed cleanly.
TEST_F(RemoteKvStoreTest, PrefetchThenLocateGivesTheSameBytesAsLocateAlone) {
  start();
  auto store = client();
  const SeqId a = store->open();
  const SeqId b = store->open();
  const std::vector<SeqId> both{a, b};
  store->reserve(both, 40);
  fill(*store, a, 0, 40, 1);
  fill(*store, b, 0, 40, 2);
  store->commit(both, 40);
  const auto scribble = [&](SeqId seq) {
    if (store->zero_copy()) return;  // spans are the daemon's memory: nothing to scribble
    for (std::int64_t layer = 0; layer < 2; ++layer) {
      for (Part part : {Part::act, Part::k, Part::v}) {
        for (const auto& span : store->locate(seq, layer, part, 0, 40)) {
          std::memset(span.data, 0xab,
                      static_cast<std::size_t>(span.n_tokens) * store->shape().row_bytes(part));
        }
      }
    }
  };
  std::vector<KvStoreClient::Range> ranges;
  for (std::int64_t layer = 0; layer < 2; ++layer) {
    for (Part part : {Part::act, Part::k, Part::v}) {
      ranges.push_back({a, layer, part, 0, 40});  // exactly what count_bad_rows locates
      ranges.push_back({b, layer, part, 8, 40});  // wider than [10, 30) below
    }
  }
  scribble(a);
  scribble(b);
  store->prefetch(ranges);
  EXPECT_EQ(count_bad_rows(*store, a, 0, 40, 1), 0);
  EXPECT_EQ(count_bad_rows(*store, b, 10, 30, 2), 0);
  EXPECT_EQ(count_bad_rows(*store, b, 0, 40, 2), 0);  // past the prefetch: fetched at locate
  scribble(a);
  EXPECT_EQ(count_bad_rows(*store, a, 0, 40, 1), 0);  // locate alone, as before

  store->prefetch(ranges);  // in flight while freed: drained first
  store->free(b);
  EXPECT_EQ(count_bad_rows(*store, a, 0, 40, 1), 0);
  const std::vector<KvStoreClient::Range> stranger{{b, 0, Part::act, 0, 1}};
  EXPECT_THROW(store->prefetch(stranger), Error);
  const std::vector<KvStoreClient::Range> past{{a, 0, Part::k, 0, 41}};
  EXPECT_THROW(store->prefetch(past), Error);
}

TEST_F(RemoteKvStoreTest, ExpiredLeaseFreesMemoryAndTheNextOpenRegistersAgain) {
  start(1 << 20, kvpr::test_timing::slow(milliseconds(300)));
  auto options = client_options("silent");
  options.heartbeat = false;
  RemoteKvStore silent(context_, small_shape(), options);
  auto alive = client("alive");  // heartbeats every 100 ms
  const SeqId s = silent.open();
  const SeqId t = alive->open();
  silent.reserve(s, 20);
  alive->reserve(t, 20);
  fill(*alive, t, 0, 20, 3);
  alive->commit(t, 20);
  const std::uint64_t before = service_->stats().used_bytes;

  const auto deadline =
      std::chrono::steady_clock::now() + kvpr::test_timing::slow(std::chrono::seconds(3));
  while (service_->stats().lease_expiries == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_EQ(service_->stats().lease_expiries, 1u);
  // The heartbeating client outlives its lease.
  std::this_thread::sleep_for(kvpr::test_timing::slow(milliseconds(400)));
  const auto st = service_->stats();
  EXPECT_EQ(st.lease_expiries, 1u);
  EXPECT_EQ(st.clients, 1u);
  EXPECT_EQ(st.used_bytes, before - 2 * 2 * kPage);
  EXPECT_EQ(metric(service_->metrics().registry(), "kvpr_kvstore_lease_expiries_total"), 1.0);
  EXPECT_EQ(count_bad_rows(*alive, t, 0, 20, 3), 0);

  try {
    silent.commit(s, 1);  // (a reserve within its blocks would not even ask the daemon)
    FAIL() << "a sequence of an expired lease was still usable";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
    EXPECT_NE(std::string(e.what()).find("unknown client"), std::string::npos) << e.what();
  }
  const SeqId again = silent.open();  // registers anew
  EXPECT_EQ(silent.generation(), 2u);
  EXPECT_THROW(silent.reserve(s, 1), Error);  // the old sequence is gone
  silent.reserve(again, 5);
  fill(silent, again, 0, 5, 4);
  silent.commit(again, 5);
  EXPECT_EQ(count_bad_rows(silent, again, 0, 5, 4), 0);
}

// The node's host-attention threads are shared by the workers that register: each asks for its
// --host-threads and learns its share at registration and with every heartbeat, so workers on
// one socket do not all plan the whole CPU.
TEST_F(RemoteKvStoreTest, WorkersShareTheNodesHostThreads) {
  start(1 << 20, kvpr::test_timing::slow(milliseconds(300)), 6);
  auto asks = [&](const std::string& name, std::uint32_t threads) {
    auto options = client_options(name);
    options.host_threads = threads;
    return std::make_unique<RemoteKvStore>(context_, small_shape(), options);
  };
  const auto wait_for = [](auto&& done) {
    const auto deadline =
        std::chrono::steady_clock::now() + kvpr::test_timing::slow(std::chrono::seconds(3));
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    return done();
  };
  auto a = asks("a", 4);
  EXPECT_EQ(a->host_threads(4), 4);  // alone, within the budget: all it asked for
  EXPECT_EQ(a->host_threads(2), 2);  // never more than the engine runs with
  auto b = asks("b", 8);
  EXPECT_EQ(b->host_threads(8), 4);                               // 6 · 8 / 12
  EXPECT_TRUE(wait_for([&] { return a->host_threads(4) == 2; }))  // 6 · 4 / 12, by heartbeat
      << a->host_threads(4);
  auto c = asks("c", 0);  // no host attention: asks for none, changes nothing
  EXPECT_EQ(c->host_threads(1), 1);
  b.reset();  // unregisters: a may use all it asked for again
  EXPECT_TRUE(wait_for([&] { return a->host_threads(4) == 4; })) << a->host_threads(4);

  // Unmanaged (budget 0): each uses what it asks for.
  a.reset();
  c.reset();
  service_->stop();
  start(1 << 20, milliseconds(10000), 0);
  auto d = asks("d", 16);
  EXPECT_EQ(d->host_threads(16), 16);
}

TEST_F(RemoteKvStoreTest, StopDrainsAndClientsThenFailWithDisconnected) {
  start();
  auto options = client_options("a");
  options.timeout = kvpr::test_timing::slow(milliseconds(300));
  RemoteKvStore a(context_, small_shape(), options);
  const SeqId s = a.open();
  a.reserve(s, 4);
  service_->stop();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    a.commit(s, 4);
    FAIL() << "commit succeeded with the service stopped";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::disconnected) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kvpr::test_timing::slow(milliseconds(1500)));
}

}  // namespace
}  // namespace kvpr::kvstore
