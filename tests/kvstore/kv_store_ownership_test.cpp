// Ownership and quotas of the kvstore service, against a real KvStoreService on tcp://127.0.0.1:0
// (and through handle() where a test needs the principal a CURVE socket would give). An attacker
// (another registered client, a made-up client handle, another principal holding the victim's
// client handle) tries every operation on the victim's sequence: each is refused
// `permissionDenied`, counted, and the victim's rows, length and blocks stay as they were. Handles
// are random; quotas bound what one client can make the daemon hold.
#include <capnp/message.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "schemas/kvstore.capnp.h"
#include "service_test_support.h"
#include "wire_test_support.h"

namespace kvpr::kvstore {
namespace {

using testing::encode_words;
using testing::get_handle;
using testing::Handle;
using testing::metric;
using testing::Reply;
using testing::set_handle;

using Build = std::function<void(wire::KvRequest::Builder)>;

// One refusable operation on a sequence, by name.
struct SeqOp {
  const char* name;
  std::function<void(wire::KvRequest::Builder, Handle)> build;
};

const std::vector<SeqOp>& seq_ops() {
  static const std::vector<SeqOp> ops = {
      {"reserve",
       [](auto r, Handle s) {
         auto st = r.initReserve();
         set_handle(st.initSeq(), s);
         st.setNTokens(64);
       }},
      {"commit",
       [](auto r, Handle s) {
         auto st = r.initCommit();
         set_handle(st.initSeq(), s);
         st.setNTokens(1);
       }},
      {"locate",
       [](auto r, Handle s) {
         auto l = r.initLocate();
         set_handle(l.initSeq(), s);
         l.setT1(1);
       }},
      {"length", [](auto r, Handle s) { set_handle(r.initLength(), s); }},
      {"truncate",
       [](auto r, Handle s) {
         auto st = r.initTruncate();
         set_handle(st.initSeq(), s);
         st.setNTokens(0);
       }},
      {"free", [](auto r, Handle s) { set_handle(r.initFree(), s); }},
      {"reserve_batch",
       [](auto r, Handle s) {
         auto b = r.initReserveBatch();
         set_handle(b.initSeqs(1)[0], s);
         b.setNTokens(64);
       }},
      {"commit_batch",
       [](auto r, Handle s) {
         auto b = r.initCommitBatch();
         set_handle(b.initSeqs(1)[0], s);
         b.setNTokens(1);
       }},
  };
  return ops;
}

class KvStoreOwnershipTest : public ::testing::Test {
 protected:
  void start(KvStoreServiceOptions options = {}) {
    if (options.capacity_bytes == KvStoreServiceOptions{}.capacity_bytes) {
      options.capacity_bytes = 1 << 20;
    }
    options.page_bytes = 4096;
    service_ = std::make_unique<KvStoreService>(context_, options);
    service_->start();
    socket_ = net::make_socket(context_, zmq::socket_type::dealer);
    socket_.set(zmq::sockopt::rcvtimeo, 2000);
    socket_.connect(service_->endpoint());
  }

  // One request over the tcp socket (no principal), the reply's frame.
  std::unique_ptr<net::Frame> send(Handle client, const Build& build) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(++id_);
    set_handle(request.initClient(), client);
    build(request);
    const auto words = encode_words(message);
    socket_.send(zmq::buffer(words.data(), words.size() * sizeof(std::uint64_t)));
    zmq::message_t reply;
    if (!socket_.recv(reply)) throw std::runtime_error("no reply within 2 s");
    return std::make_unique<net::Frame>(reply);
  }

  // One request through handle() as if from a peer authenticated as `principal`.
  std::unique_ptr<net::Frame> send_as(const std::string& principal, Handle client,
                                      const Build& build) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(++id_);
    set_handle(request.initClient(), client);
    build(request);
    const auto words = encode_words(message);
    const auto reply =
        service_->handle(words.data(), words.size() * sizeof(std::uint64_t), principal);
    return std::make_unique<net::Frame>(reply);
  }

  static Reply summary(net::Frame& frame) {
    return testing::summarize(frame.root<wire::KvReply>());
  }

  static Build register_build(std::int64_t n_layers = 2) {
    return [n_layers](wire::KvRequest::Builder r) {
      auto reg = r.initRegister();
      reg.setName("client");
      auto shape = reg.initShape();
      shape.setNLayers(n_layers);
      shape.setH(8);
      shape.setHKv(4);
    };
  }

  Handle register_client(const std::string& principal = "") {
    auto frame = send_as(principal, {}, register_build());
    const auto reply = frame->root<wire::KvReply>();
    EXPECT_TRUE(reply.isRegistered()) << summary(*frame).reason;
    return get_handle(reply.getRegistered().getClient());
  }

  Handle open(Handle client, const std::string& principal = "") {
    auto frame = send_as(principal, client, [](auto r) { r.setOpen(); });
    const auto reply = frame->root<wire::KvReply>();
    EXPECT_TRUE(reply.isOpened()) << summary(*frame).reason;
    return get_handle(reply.getOpened());
  }

  double rejected(const std::string& reason) {
    return metric(service_->metrics().registry(), "kvpr_rejected_messages_total",
                  {{"reason", reason}});
  }

  // The victim: one sequence of 8 committed tokens (of 64 reserved) whose rows hold a pattern
  // written straight into the arena at the offsets the daemon gave.
  void make_victim() {
    victim_ = register_client();
    victim_seq_ = open(victim_);
    auto frame = send(victim_, [&](auto r) {
      auto st = r.initReserve();
      set_handle(st.initSeq(), victim_seq_);
      st.setNTokens(8);
    });
    const auto offsets = frame->root<wire::KvReply>().getReserved().getOffsets();
    ASSERT_EQ(offsets.size(), 2u);  // one 64-token block in each of 2 layers
    auto* arena = static_cast<unsigned char*>(service_->arena());
    for (const std::uint64_t offset : offsets) {
      victim_offsets_.push_back(offset);
      for (std::size_t i = 0; i < 4096; ++i) arena[offset + i] = static_cast<unsigned char>(i * 7);
    }
    ASSERT_FALSE(summary(*send(victim_, [&](auto r) {
                   auto st = r.initCommit();
                   set_handle(st.initSeq(), victim_seq_);
                   st.setNTokens(8);
                 })).error);
  }

  // The victim's sequence is as make_victim() left it, and still usable: more tokens reserve,
  // commit and read back, then it frees.
  void expect_victim_intact() {
    auto frame = send(victim_, [&](auto r) { set_handle(r.initLength(), victim_seq_); });
    ASSERT_TRUE(frame->root<wire::KvReply>().isLength()) << summary(*frame).reason;
    EXPECT_EQ(frame->root<wire::KvReply>().getLength(), 8);
    const auto* arena = static_cast<const unsigned char*>(service_->arena());
    for (std::size_t layer = 0; layer < victim_offsets_.size(); ++layer) {
      frame = send(victim_, [&](auto r) {
        auto l = r.initLocate();
        set_handle(l.initSeq(), victim_seq_);
        l.setLayer(static_cast<std::int64_t>(layer));
        l.setT1(8);
      });
      const auto spans = frame->root<wire::KvReply>().getSpans();
      ASSERT_EQ(spans.size(), 1u) << summary(*frame).reason;
      EXPECT_EQ(spans[0].getOffset(), victim_offsets_[layer]);  // act rows start the block
      int bad = 0;
      for (std::size_t i = 0; i < 4096; ++i) {
        bad += arena[victim_offsets_[layer] + i] != static_cast<unsigned char>(i * 7);
      }
      EXPECT_EQ(bad, 0) << "layer " << layer;
    }
    for (const bool reserve : {true, false}) {
      const Reply step = summary(*send(victim_, [&](auto r) {
        auto st = reserve ? r.initReserve() : r.initCommit();
        set_handle(st.initSeq(), victim_seq_);
        st.setNTokens(8);
      }));
      EXPECT_FALSE(step.error) << step.reason;
    }
    frame = send(victim_, [&](auto r) { set_handle(r.initLength(), victim_seq_); });
    EXPECT_EQ(frame->root<wire::KvReply>().getLength(), 16);
    EXPECT_FALSE(
        summary(*send(victim_, [&](auto r) { set_handle(r.initFree(), victim_seq_); })).error);
  }

  // Every sequence operation from (principal, client) on seq: refused, counted, one message per
  // operation. Returns the reasons by operation.
  std::vector<std::string> expect_all_refused(const std::string& principal, Handle client,
                                              Handle seq) {
    std::vector<std::string> reasons;
    for (const auto& op : seq_ops()) {
      SCOPED_TRACE(op.name);
      const double before = rejected("permission_denied");
      const Build build = [&](auto r) { op.build(r, seq); };
      const Reply reply = summary(*(principal.empty() && client != Handle{}
                                        ? send(client, build)  // over the socket
                                        : send_as(principal, client, build)));
      EXPECT_TRUE(reply.error);
      EXPECT_EQ(reply.kind, wire::ErrorKind::PERMISSION_DENIED) << reply.reason;
      EXPECT_NE(reply.reason.find(op.name), std::string::npos) << reply.reason;
      EXPECT_EQ(rejected("permission_denied"), before + 1);
      reasons.push_back(reply.reason);
    }
    return reasons;
  }

  zmq::context_t context_;
  std::unique_ptr<KvStoreService> service_;
  zmq::socket_t socket_;
  std::uint64_t id_ = 0;
  Handle victim_;
  Handle victim_seq_;
  std::vector<std::uint64_t> victim_offsets_;
};

TEST_F(KvStoreOwnershipTest, AnotherClientCannotTouchTheVictimsSequence) {
  start();
  make_victim();
  const Handle attacker = register_client();
  const Handle own = open(attacker);
  const auto foreign = expect_all_refused("", attacker, victim_seq_);
  // A made-up sequence handle gets the very same answers: nothing tells the two apart.
  EXPECT_EQ(expect_all_refused("", attacker, {victim_seq_.first, victim_seq_.second + 1}), foreign);
  // A batch that mixes the attacker's own sequence with the victim's changes neither.
  const Reply mixed = summary(*send(attacker, [&](auto r) {
    auto b = r.initReserveBatch();
    auto seqs = b.initSeqs(2);
    set_handle(seqs[0], own);
    set_handle(seqs[1], victim_seq_);
    b.setNTokens(64);
  }));
  EXPECT_EQ(mixed.kind, wire::ErrorKind::PERMISSION_DENIED) << mixed.reason;
  EXPECT_EQ(rejected("permission_denied"), 2.0 * seq_ops().size() + 1);
  EXPECT_EQ(rejected("invalid"), 0.0);
  expect_victim_intact();
  EXPECT_EQ(service_->stats().clients, 2u);
}

TEST_F(KvStoreOwnershipTest, AMadeUpClientHandleGetsNoService) {
  start();
  make_victim();
  const Handle stranger{victim_.first ^ 1, victim_.second};
  expect_all_refused("", stranger, victim_seq_);
  for (const auto& [name, build] :
       std::vector<std::pair<std::string, Build>>{{"heartbeat", [](auto r) { r.setHeartbeat(); }},
                                                  {"unregister", [](auto r) { r.setUnregister(); }},
                                                  {"open", [](auto r) { r.setOpen(); }}}) {
    const Reply reply = summary(*send(stranger, build));
    EXPECT_EQ(reply.kind, wire::ErrorKind::PERMISSION_DENIED) << name << ": " << reply.reason;
    EXPECT_NE(reply.reason.find(name), std::string::npos) << reply.reason;
  }
  EXPECT_EQ(rejected("permission_denied"), seq_ops().size() + 3.0);
  EXPECT_EQ(service_->stats().clients, 1u);
  EXPECT_EQ(service_->stats().sequences, 1u);
  expect_victim_intact();
}

// The victim's client handle in the hands of another principal (or of an unauthenticated peer)
// is worth nothing: refused exactly as a handle that does not exist.
TEST_F(KvStoreOwnershipTest, AClientBelongsToThePrincipalThatRegisteredIt) {
  start();
  const Handle victim = register_client("worker-0");
  const Handle seq = open(victim, "worker-0");
  const auto stolen = expect_all_refused("worker-1", victim, seq);
  EXPECT_EQ(expect_all_refused("worker-1", {victim.first, victim.second ^ 1}, seq), stolen);
  expect_all_refused("", victim, seq);  // unauthenticated, through handle()
  for (const std::string thief : {"worker-1", ""}) {
    for (const Build& build :
         {Build([](auto r) { r.setHeartbeat(); }), Build([](auto r) { r.setUnregister(); }),
          Build([](auto r) { r.setOpen(); })}) {
      EXPECT_EQ(summary(*send_as(thief, victim, build)).kind, wire::ErrorKind::PERMISSION_DENIED);
    }
  }
  EXPECT_EQ(service_->stats().clients, 1u);
  EXPECT_EQ(service_->stats().sequences, 1u);
  // Its own principal still has everything.
  auto frame = send_as("worker-0", victim, [&](auto r) {
    auto st = r.initReserve();
    set_handle(st.initSeq(), seq);
    st.setNTokens(4);
  });
  EXPECT_TRUE(frame->root<wire::KvReply>().isReserved()) << summary(*frame).reason;
  frame = send_as("worker-0", victim, [&](auto r) { set_handle(r.initFree(), seq); });
  EXPECT_FALSE(summary(*frame).error) << summary(*frame).reason;
}

// With require_principal only authenticated peers are served: an unauthenticated one never sees
// the arena's address or remote key.
TEST_F(KvStoreOwnershipTest, RequirePrincipalRefusesUnauthenticatedPeers) {
  KvStoreServiceOptions options;
  options.require_principal = true;
  start(options);
  Reply reply = summary(*send({}, register_build()));  // the tcp socket has no CURVE
  EXPECT_EQ(reply.kind, wire::ErrorKind::PERMISSION_DENIED) << reply.reason;
  EXPECT_NE(reply.reason.find("register"), std::string::npos) << reply.reason;
  reply = summary(*send({}, [](auto r) { r.setStats(); }));
  EXPECT_EQ(reply.kind, wire::ErrorKind::PERMISSION_DENIED) << reply.reason;
  EXPECT_EQ(rejected("permission_denied"), 2.0);
  EXPECT_EQ(service_->stats().clients, 0u);

  auto frame = send_as("worker-0", {}, register_build());
  const auto reg = frame->root<wire::KvReply>();
  ASSERT_TRUE(reg.isRegistered()) << summary(*frame).reason;
  EXPECT_GT(reg.getRegistered().getRkey().size(), 0u);
  EXPECT_NE(reg.getRegistered().getArenaAddress(), 0u);
}

TEST_F(KvStoreOwnershipTest, HandlesOfAThousandRegistrationsAreDistinctAndNotSequential) {
  KvStoreServiceOptions options;
  options.capacity_bytes = 8 << 20;  // 1000 client records and sequences' tables
  start(options);
  std::vector<Handle> clients;
  std::vector<Handle> seqs;
  for (int i = 0; i < 1000; ++i) {
    clients.push_back(register_client());
    seqs.push_back(open(clients.back()));
  }
  std::set<Handle> all(clients.begin(), clients.end());
  all.insert(seqs.begin(), seqs.end());
  EXPECT_EQ(all.size(), 2000u);
  std::set<std::uint64_t> highs, lows;
  int close = 0;
  for (std::size_t i = 0; i < clients.size(); ++i) {
    for (const Handle& h : {clients[i], seqs[i]}) {
      highs.insert(h.first);
      lows.insert(h.second);
      EXPECT_NE(h, Handle{});
    }
    if (i > 0) {  // neighbours differ in every half by more than any counter would
      const auto near = [](std::uint64_t a, std::uint64_t b) {
        return (a > b ? a - b : b - a) < (std::uint64_t{1} << 32);
      };
      close += near(clients[i].first, clients[i - 1].first) ||
               near(clients[i].second, clients[i - 1].second) ||
               near(seqs[i].second, seqs[i - 1].second);
    }
  }
  EXPECT_EQ(highs.size(), 2000u);
  EXPECT_EQ(lows.size(), 2000u);
  EXPECT_EQ(close, 0);
}

// The amplification: opens of a 65,536-layer shape took a 16 MB store to 465 MB of
// tables. Such a shape is refused at register, and a shape that fits can open sequences only
// while their tables fit the capacity next to the rows.
TEST_F(KvStoreOwnershipTest, AmplificationByHugeShapesIsRefusedWithinCapacity) {
  KvStoreServiceOptions options;
  options.capacity_bytes = 16 << 20;  // 4096 pages of 4 KiB
  start(options);
  Reply reply = summary(*send({}, register_build(65536)));
  EXPECT_EQ(reply.kind, wire::ErrorKind::FAILED) << reply.reason;
  EXPECT_NE(reply.reason.find("65536 layers"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("invalid"), 1.0);

  auto frame = send({}, register_build(4000));  // 96 KB of tables per sequence
  ASSERT_TRUE(frame->root<wire::KvReply>().isRegistered()) << summary(*frame).reason;
  const Handle attacker = get_handle(frame->root<wire::KvReply>().getRegistered().getClient());
  int opened = 0;
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    reply = summary(*send(attacker, [](auto r) { r.setOpen(); }));
    if (reply.error) {
      EXPECT_EQ(reply.kind, wire::ErrorKind::OVERLOADED) << reply.reason;
      ++refused;
    } else {
      ++opened;
    }
    const auto st = service_->stats();
    ASSERT_LE(st.used_bytes + st.metadata_bytes, st.capacity_bytes) << "after open " << i;
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(refused, 0);
  EXPECT_LE(service_->stats().metadata_bytes, options.capacity_bytes);
  // A modest client still registers once the attacker is gone, and its memory comes back.
  send(attacker, [](auto r) { r.setUnregister(); });
  EXPECT_EQ(service_->stats().metadata_bytes, 0u);
  make_victim();
  expect_victim_intact();
}

TEST_F(KvStoreOwnershipTest, PerClientQuotasOfSequencesMetadataAndBlocks) {
  KvStoreServiceOptions options;
  options.max_sequences_per_client = 5;
  options.max_block_bytes_per_client = 4 * 4096;
  start(options);
  const Handle a = register_client();
  const Handle b = register_client();
  std::vector<Handle> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(open(a));
  Reply reply = summary(*send(a, [](auto r) { r.setOpen(); }));
  EXPECT_EQ(reply.kind, wire::ErrorKind::OVERLOADED) << reply.reason;
  EXPECT_NE(reply.reason.find("quota"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("quota"), 1.0);
  open(b);  // another client is not held back
  send(a, [&](auto r) { set_handle(r.initFree(), seqs.back()); });
  seqs.back() = open(a);  // a freed sequence makes room

  // 4 pages: 2 blocks in each of 2 layers for one sequence, then no more.
  reply = summary(*send(a, [&](auto r) {
    auto st = r.initReserve();
    set_handle(st.initSeq(), seqs[0]);
    st.setNTokens(128);
  }));
  EXPECT_FALSE(reply.error) << reply.reason;
  reply = summary(*send(a, [&](auto r) {
    auto st = r.initReserve();
    set_handle(st.initSeq(), seqs[1]);
    st.setNTokens(1);
  }));
  EXPECT_EQ(reply.kind, wire::ErrorKind::OVERLOADED) << reply.reason;
  EXPECT_NE(reply.reason.find("quota of 4 pages"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("quota"), 2.0);
  EXPECT_EQ(service_->stats().used_bytes, 4u * 4096);
}

TEST_F(KvStoreOwnershipTest, PerClientMetadataQuota) {
  KvStoreServiceOptions options;
  options.max_metadata_bytes_per_client = 8192;
  start(options);
  Reply reply = summary(*send({}, register_build(1000)));  // 24 KB of tables a sequence
  EXPECT_EQ(reply.kind, wire::ErrorKind::FAILED) << reply.reason;
  EXPECT_NE(reply.reason.find("1000 layers"), std::string::npos) << reply.reason;
  const Handle a = register_client();  // 1 KiB record, ~300 bytes a sequence
  int opened = 0;
  for (; opened < 100; ++opened) {
    reply = summary(*send(a, [](auto r) { r.setOpen(); }));
    if (reply.error) break;
  }
  EXPECT_EQ(reply.kind, wire::ErrorKind::OVERLOADED) << reply.reason;
  EXPECT_GT(opened, 10);
  EXPECT_LT(opened, 100);
  EXPECT_EQ(rejected("quota"), 1.0);
  EXPECT_LE(service_->stats().metadata_bytes, 8192u);
}

}  // namespace
}  // namespace kvpr::kvstore
