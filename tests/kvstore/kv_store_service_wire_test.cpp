// The kvstore service against bad input: every malformed, unknown or out-of-range request gets an
// error reply (with its id when it can be read), is counted in
// kvpr_rejected_messages_total{reason}, and the service keeps answering. Over a real socket
// (ROUTER on tcp://127.0.0.1:0) and through handle() directly, as a fuzzer would call it.
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/kv_store_service.h"
#include "kvpr/net/metrics.h"
#include "kvpr/net/rpc.h"
#include "kvpr/net/wire.h"
#include "schemas/kvstore.capnp.h"
#include "service_test_support.h"
#include "wire_test_support.h"

namespace kvpr::kvstore {
namespace {

using std::chrono::milliseconds;
using testing::decode;
using testing::encode_words;
using testing::get_handle;
using testing::Handle;
using testing::metric;
using testing::Reply;
using testing::set_handle;

class KvStoreServiceWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KvStoreServiceOptions options;
    options.capacity_bytes = 1 << 20;
    options.page_bytes = 4096;
    service_ = std::make_unique<KvStoreService>(context_, options);
    service_->start();
    socket_ = net::make_socket(context_, zmq::socket_type::dealer);
    socket_.set(zmq::sockopt::rcvtimeo, 2000);
    socket_.connect(service_->endpoint());
  }

  // Sends the frames as one multi-part message and returns the decoded reply.
  Reply exchange(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]),
                   i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    zmq::message_t reply;
    if (!socket_.recv(reply)) throw std::runtime_error("no reply within 2 s");
    return decode(reply.data(), reply.size());
  }
  Reply exchange(capnp::MessageBuilder& message) {
    const auto bytes = capnp::messageToFlatArray(message);
    return exchange({std::string(reinterpret_cast<const char*>(bytes.asBytes().begin()),
                                 bytes.asBytes().size())});
  }

  double rejected(const std::string& reason) {
    return metric(service_->metrics().registry(), "kvpr_rejected_messages_total",
                  {{"reason", reason}});
  }

  // Sends request through handle() (no socket) and returns the reply's frame.
  std::unique_ptr<net::Frame> call_handle(capnp::MessageBuilder& message) {
    const auto words = encode_words(message);
    const auto reply = service_->handle(words.data(), words.size() * sizeof(std::uint64_t));
    return std::make_unique<net::Frame>(reply);
  }

  // A registered client (raw wire) with a sequence of 8 reserved tokens.
  void register_client() {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(1);
    auto shape = request.initRegister().initShape();
    shape.setNLayers(2);
    shape.setH(8);
    shape.setHKv(4);
    client_ = get_handle(call_handle(message)->root<wire::KvReply>().getRegistered().getClient());
    capnp::MallocMessageBuilder open;
    auto o = open.initRoot<wire::KvRequest>();
    o.setId(2);
    set_handle(o.initClient(), client_);
    o.setOpen();
    seq_ = get_handle(call_handle(open)->root<wire::KvReply>().getOpened());
    capnp::MallocMessageBuilder reserve;
    auto r = reserve.initRoot<wire::KvRequest>();
    r.setId(3);
    set_handle(r.initClient(), client_);
    auto st = r.initReserve();
    set_handle(st.initSeq(), seq_);
    st.setNTokens(8);
    const Reply reply = exchange(reserve);  // and once over the socket
    ASSERT_FALSE(reply.error) << reply.reason;
    ASSERT_EQ(reply.which, wire::KvReply::Which::RESERVED);
  }

  void expect_still_serving() {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(424242);
    request.setStats();
    const auto reply = exchange(message);
    EXPECT_FALSE(reply.error) << reply.reason;
    EXPECT_EQ(reply.id, 424242u);
    EXPECT_EQ(reply.which, wire::KvReply::Which::STATS);
  }

  zmq::context_t context_;
  std::unique_ptr<KvStoreService> service_;
  zmq::socket_t socket_;
  Handle client_;
  Handle seq_;
};

TEST_F(KvStoreServiceWireTest, MalformedFramesAreAnsweredAndCounted) {
  const Reply garbage = exchange({"this is not a capnp message"});
  EXPECT_TRUE(garbage.error);
  EXPECT_NE(garbage.reason.find("malformed"), std::string::npos) << garbage.reason;
  EXPECT_EQ(rejected("malformed"), 1.0);

  const Reply words = exchange({std::string(64, '\xff')});  // whole words, nonsense segment table
  EXPECT_TRUE(words.error);
  EXPECT_EQ(rejected("malformed"), 2.0);

  const Reply frames = exchange({"a", "b"});  // [peer, a, b] at the ROUTER: 3 frames
  EXPECT_TRUE(frames.error);
  EXPECT_NE(frames.reason.find("frames"), std::string::npos) << frames.reason;
  EXPECT_EQ(rejected("malformed"), 3.0);

  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::KvRequest>();
  request.setId(77);
  auto reg = request.initRegister();
  reg.setName(std::string(300, 'n'));
  reg.initShape().setNLayers(2);
  const auto whole = encode_words(message);
  const std::string truncated(reinterpret_cast<const char*>(whole.data()),
                              (whole.size() / 2) * sizeof(std::uint64_t));
  const Reply cut = exchange({truncated});
  EXPECT_TRUE(cut.error);
  EXPECT_NE(cut.reason.find("malformed"), std::string::npos) << cut.reason;
  EXPECT_EQ(rejected("malformed"), 4.0);

  // Over the socket's limit: the sender is disconnected before the frame is buffered (no reply).
  EXPECT_THROW(exchange({std::string(net::RouterLimits{}.max_message_bytes + 8, '\0')}),
               std::runtime_error);
  EXPECT_EQ(rejected("malformed"), 4.0);
  EXPECT_EQ(service_->stats().rejected_messages, 4u);
  expect_still_serving();
}

TEST_F(KvStoreServiceWireTest, UnknownUnionMemberIsUnimplemented) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::KvRequest>();
  request.setId(99);
  request.setStats();
  // Overwrite the union's discriminant with a member a newer peer might send.
  const auto offset =
      capnp::Schema::from<wire::KvRequest>().getProto().getStruct().getDiscriminantOffset();
  auto data = message.getRoot<capnp::AnyStruct>().getDataSection();
  const std::uint16_t which = 250;
  std::memcpy(data.begin() + offset * 2, &which, sizeof which);
  const Reply reply = exchange(message);
  EXPECT_TRUE(reply.error);
  EXPECT_EQ(reply.id, 99u);
  EXPECT_EQ(reply.kind, wire::ErrorKind::UNIMPLEMENTED);
  EXPECT_NE(reply.reason.find("250"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("unknown_type"), 1.0);
  expect_still_serving();
}

TEST_F(KvStoreServiceWireTest, OutOfRangeFieldsAreInvalid) {
  register_client();
  struct Case {
    const char* what;
    std::function<void(wire::KvRequest::Builder)> build;
    const char* needle;
  };
  const Handle seq = seq_;
  const std::vector<Case> cases = {
      {"layer past n_layers",
       [&](auto r) {
         auto l = r.initLocate();
         set_handle(l.initSeq(), seq);
         l.setLayer(2);
         l.setT1(1);
       },
       "layer 2"},
      {"negative layer",
       [&](auto r) {
         auto l = r.initLocate();
         set_handle(l.initSeq(), seq);
         l.setLayer(-1);
       },
       "layer -1"},
      {"t1 < t0",
       [&](auto r) {
         auto l = r.initLocate();
         set_handle(l.initSeq(), seq);
         l.setT0(5);
         l.setT1(4);
       },
       "[5, 4)"},
      {"past the reservation",
       [&](auto r) {
         auto l = r.initLocate();
         set_handle(l.initSeq(), seq);
         l.setT1(9);
       },
       "[0, 9)"},
      {"negative tokens",
       [&](auto r) {
         auto st = r.initReserve();
         set_handle(st.initSeq(), seq);
         st.setNTokens(-3);
       },
       "-3"},
      {"commit past the reservation",
       [&](auto r) {
         auto st = r.initCommit();
         set_handle(st.initSeq(), seq);
         st.setNTokens(9);
       },
       "commit of 9"},
      {"truncate past the length",
       [&](auto r) {
         auto st = r.initTruncate();
         set_handle(st.initSeq(), seq);
         st.setNTokens(1);
       },
       "to 1 tokens"},
      {"a batch that lists a sequence twice",
       [&](auto r) {
         auto b = r.initReserveBatch();
         auto seqs = b.initSeqs(2);
         set_handle(seqs[0], seq);
         set_handle(seqs[1], seq);
         b.setNTokens(1);
       },
       "twice"},
      {"a batch of negative tokens",
       [&](auto r) {
         auto b = r.initCommitBatch();
         set_handle(b.initSeqs(1)[0], seq);
         b.setNTokens(-3);
       },
       "-3"},
      {"a batch commit past the blocks",  // one block of 64 tokens
       [&](auto r) {
         auto b = r.initCommitBatch();
         set_handle(b.initSeqs(1)[0], seq);
         b.setNTokens(65);
       },
       "commit of 65"},
      {"a batch of too many sequences",
       [&](auto r) {
         auto b = r.initCommitBatch();
         b.initSeqs(4097);
         b.setNTokens(1);
       },
       "4097 sequences"},
  };
  double expected = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(1000 + static_cast<std::uint64_t>(expected));
    set_handle(request.initClient(), client_);
    c.build(request);
    const Reply reply = exchange(message);
    EXPECT_TRUE(reply.error);
    EXPECT_EQ(reply.id, 1000 + static_cast<std::uint64_t>(expected));
    EXPECT_EQ(reply.kind, wire::ErrorKind::FAILED);
    EXPECT_NE(reply.reason.find(c.needle), std::string::npos) << reply.reason;
    EXPECT_EQ(rejected("invalid"), ++expected);
  }

  // A bad shape, a token larger than a page, a past deadline. (Unknown clients and sequences
  // are refused as permission_denied: kv_store_ownership_test.)
  Reply reply;
  for (const auto& [h, needle] : {std::pair<std::int64_t, const char*>{0, "invalid shape"},
                                  {4096, "more than a page of 4096 bytes"}}) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(6);
    auto shape = request.initRegister().initShape();
    shape.setNLayers(2);
    shape.setH(h);
    shape.setHKv(4);
    reply = exchange(message);
    EXPECT_TRUE(reply.error);
    EXPECT_NE(reply.reason.find(needle), std::string::npos) << reply.reason;
    EXPECT_EQ(rejected("invalid"), ++expected);
  }

  capnp::MallocMessageBuilder late;
  auto l = late.initRoot<wire::KvRequest>();
  l.setId(7);
  set_handle(l.initClient(), client_);
  l.setDeadlineUnixMs(net::now_unix_ms() - 1000);
  l.setHeartbeat();
  reply = exchange(late);
  EXPECT_TRUE(reply.error);
  EXPECT_EQ(reply.id, 7u);
  EXPECT_NE(reply.reason.find("expired"), std::string::npos) << reply.reason;
  EXPECT_EQ(rejected("expired"), 1.0);
  expect_still_serving();
  EXPECT_EQ(
      metric(service_->metrics().registry(), "kvpr_kvstore_requests_total", {{"type", "locate"}}),
      4.0);
}

// reserveBatch and commitBatch change every sequence or none: a batch that does not fit leaves
// each sequence as it was, and one reply carries every sequence's new blocks in order.
TEST_F(KvStoreServiceWireTest, BatchesAreAllOrNothing) {
  register_client();  // seq_ holds 8 reserved tokens: 2 blocks per layer of 4096-byte pages
  capnp::MallocMessageBuilder open;
  auto o = open.initRoot<wire::KvRequest>();
  o.setId(10);
  set_handle(o.initClient(), client_);
  o.setOpen();
  const Handle b = get_handle(call_handle(open)->root<wire::KvReply>().getOpened());
  const auto batch = [&](bool reserve, std::int64_t n) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::KvRequest>();
    request.setId(11);
    set_handle(request.initClient(), client_);
    auto body = reserve ? request.initReserveBatch() : request.initCommitBatch();
    auto seqs = body.initSeqs(2);
    set_handle(seqs[0], seq_);
    set_handle(seqs[1], b);
    body.setNTokens(n);
    return call_handle(message);
  };
  const auto used = service_->stats().used_bytes;
  // 256 pages of 4 KiB, 64 tokens a page: 100 blocks in each of 2 layers fit either sequence
  // alone, not both.
  auto frame = batch(true, 100 * 4096 / 64);
  auto reply = frame->root<wire::KvReply>();
  ASSERT_TRUE(reply.isError());
  EXPECT_EQ(reply.getError().getKind(), wire::ErrorKind::OVERLOADED);
  EXPECT_EQ(service_->stats().used_bytes, used);
  EXPECT_EQ(rejected("invalid"), 0.0);  // a full store is no bad message

  frame = batch(true, 8);
  reply = frame->root<wire::KvReply>();
  ASSERT_TRUE(reply.isReservedBatch()) << reply.getError().getReason().cStr();
  const auto reserved = reply.getReservedBatch();
  ASSERT_EQ(reserved.size(), 2u);
  EXPECT_EQ(reserved[0].getBlocksPerLayer(), 0);  // seq_ had its 8 tokens already
  EXPECT_EQ(reserved[1].getReservedTokens(), 8);
  EXPECT_EQ(reserved[1].getOffsets().size(), 2u * reserved[1].getBlocksPerLayer());

  // A batch commit may reach past the reserved tokens into the blocks (the client reserves inside
  // them without asking), not past them: 65 fails for both (one 64-token block each), and
  // neither length moves.
  frame = batch(false, 65);
  ASSERT_TRUE(frame->root<wire::KvReply>().isError());
  frame = batch(false, 8);
  ASSERT_FALSE(frame->root<wire::KvReply>().isError());
  capnp::MallocMessageBuilder length;
  auto l = length.initRoot<wire::KvRequest>();
  l.setId(12);
  set_handle(l.initClient(), client_);
  set_handle(l.initLength(), b);
  EXPECT_EQ(call_handle(length)->root<wire::KvReply>().getLength(), 8);
  EXPECT_EQ(metric(service_->metrics().registry(), "kvpr_kvstore_requests_total",
                   {{"type", "reserve_batch"}}),
            2.0);
}

TEST_F(KvStoreServiceWireTest, HandleNeverThrowsOnRandomOrMutatedInput) {
  register_client();
  std::mt19937_64 rng(7);
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::KvRequest>();
  request.setId(11);
  set_handle(request.initClient(), client_);
  auto loc = request.initLocate();
  set_handle(loc.initSeq(), seq_);
  loc.setT1(8);
  const auto valid = encode_words(message);
  for (int i = 0; i < 3000; ++i) {
    std::vector<std::uint64_t> words = valid;
    auto* bytes = reinterpret_cast<unsigned char*>(words.data());
    const std::size_t n = words.size() * sizeof(std::uint64_t);
    for (int flips = 1 + static_cast<int>(rng() % 4); flips > 0; --flips) {
      bytes[rng() % n] ^= static_cast<unsigned char>(1u << (rng() % 8));
    }
    const std::size_t size = i % 5 == 0 ? rng() % n : n;  // sometimes truncated, unaligned
    zmq::message_t reply;
    ASSERT_NO_THROW(reply = service_->handle(bytes, size));
    ASSERT_NO_THROW(decode(reply.data(), reply.size()));
  }
  expect_still_serving();
}

}  // namespace
}  // namespace kvpr::kvstore
