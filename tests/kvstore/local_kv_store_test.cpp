#include "kvpr/kvstore/local_kv_store.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::kvstore {
namespace {

StoreShape small_shape(DType dtype = DType::f32) {
  StoreShape s;
  s.n_layers = 2;
  s.h = 8;
  s.h_kv = 4;
  s.dtype = dtype;
  s.block_tokens = 4;
  return s;
}

// Writes value(t, layer, part, col) into every row of [t0, t1) through the spans.
void fill(KvStoreClient& store, SeqId seq, std::int64_t t0, std::int64_t t1) {
  const auto& shape = store.shape();
  for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (Part part : {Part::act, Part::k, Part::v}) {
      for (const auto& span : store.locate(seq, layer, part, t0, t1)) {
        auto* rows = reinterpret_cast<float*>(span.data);
        for (std::int64_t r = 0; r < span.n_tokens; ++r) {
          for (std::int64_t c = 0; c < shape.width(part); ++c) {
            rows[r * shape.width(part) + c] = static_cast<float>(
                (span.t0 + r) * 1000 + layer * 100 + static_cast<int>(part) * 10 + c);
          }
        }
      }
    }
  }
}

// A batch reserve takes blocks for every sequence or for none: when the store holds enough for
// one sequence but not both, nothing is reserved, and a bad batch changes nothing either.
TEST(LocalKvStore, BatchReserveAndCommitAreAllOrNothing) {
  const std::size_t block = small_shape().block_bytes();
  LocalKvStore store(small_shape(), 6 * block);  // 3 blocks per layer in all
  const SeqId a = store.open();
  const SeqId b = store.open();
  const std::vector<SeqId> both{a, b};
  try {
    store.reserve(both, 8);  // 2 blocks per layer each: 8 blocks, 6 exist
    FAIL() << "a batch past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 sequence(s) need 8 more blocks"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(store.stats().used_bytes, 0u);
  EXPECT_EQ(store.stats().allocation_failures, 1u);
  EXPECT_THROW(store.locate(a, 0, Part::act, 0, 1), Error);  // a got nothing either

  const std::vector<SeqId> twice{a, a};
  EXPECT_THROW(store.reserve(twice, 1), Error);
  const std::vector<SeqId> stranger{a, 999};
  EXPECT_THROW(store.reserve(stranger, 1), Error);
  EXPECT_EQ(store.stats().used_bytes, 0u);

  store.reserve(both, 4);  // 1 block per layer each
  EXPECT_EQ(store.stats().used_bytes, 4 * block);
  store.reserve(std::vector<SeqId>{a}, 5);     // a grows alone
  EXPECT_THROW(store.commit(both, 5), Error);  // b has 4 reserved: neither commits
  EXPECT_EQ(store.length(a), 0);
  store.commit(both, 4);
  EXPECT_EQ(store.length(a), 4);
  EXPECT_EQ(store.length(b), 4);
  EXPECT_THROW(store.commit(twice, 1), Error);
  EXPECT_EQ(store.length(a), 4);
}

TEST(LocalKvStore, SpansCoverRangesAcrossBlocksAndKeepData) {
  LocalKvStore store(small_shape(), 1 << 20);
  const SeqId a = store.open();
  const SeqId b = store.open();
  store.reserve(a, 10);
  store.reserve(b, 3);
  fill(store, a, 0, 10);
  fill(store, b, 0, 3);
  store.commit(a, 10);
  store.commit(b, 3);
  EXPECT_EQ(store.length(a), 10);
  // A range that starts and ends inside blocks of 4 tokens: [3,4) [4,8) [8,9).
  const auto spans = store.locate(a, 1, Part::v, 3, 9);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].t0, 3);
  EXPECT_EQ(spans[0].n_tokens, 1);
  EXPECT_EQ(spans[1].n_tokens, 4);
  EXPECT_EQ(spans[2].t0, 8);
  for (const auto& span : spans) {
    const auto* rows = reinterpret_cast<const float*>(span.data);
    for (std::int64_t r = 0; r < span.n_tokens; ++r) {
      EXPECT_EQ(rows[r * 4 + 2], static_cast<float>((span.t0 + r) * 1000 + 100 + 20 + 2));
    }
  }
  // Sequence b's rows were not overwritten by a's.
  const auto b_rows = store.locate(b, 0, Part::act, 0, 3);
  ASSERT_EQ(b_rows.size(), 1u);
  EXPECT_EQ(reinterpret_cast<const float*>(b_rows[0].data)[2 * 8 + 5], 2005.0f);
}

TEST(LocalKvStore, FullStoreAnswersOverloadedAndKeepsLiveData) {
  const auto shape = small_shape(DType::f16);
  // Room for exactly 4 blocks: 2 layers x 2 blocks = 8 tokens of one sequence.
  LocalKvStore store(shape, 4 * shape.block_bytes() + 7);
  const SeqId a = store.open();
  store.reserve(a, 8);
  store.commit(a, 8);
  const auto before = store.stats();
  EXPECT_EQ(before.used_bytes, 4 * shape.block_bytes());
  EXPECT_EQ(before.capacity_bytes, 4 * shape.block_bytes() + 7);
  const SeqId b = store.open();
  try {
    store.reserve(b, 1);
    FAIL() << "reserve past capacity succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::overloaded);
    EXPECT_NE(std::string(e.what()).find("overloaded"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("0 of 4"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store.stats().allocation_failures, 1u);
  EXPECT_EQ(store.stats().used_bytes, before.used_bytes);
  EXPECT_EQ(store.length(a), 8);
  store.free(a);
  EXPECT_EQ(store.stats().used_bytes, 0u);
  store.reserve(b, 8);  // the memory came back
  EXPECT_EQ(store.stats().used_bytes, 4 * shape.block_bytes());
}

TEST(LocalKvStore, ReserveIsIdempotentAndCommitNeedsReservation) {
  LocalKvStore store(small_shape(), 1 << 20);
  const SeqId a = store.open();
  store.reserve(a, 1);
  store.reserve(a, 1);  // a retried step reuses its reservation
  EXPECT_EQ(store.stats().used_bytes, 2 * small_shape().block_bytes());
  EXPECT_THROW(store.commit(a, 2), Error);
  store.commit(a, 1);
  EXPECT_THROW(store.locate(a, 0, Part::k, 0, 2), Error);  // past the reservation
  EXPECT_THROW(store.locate(a, 2, Part::k, 0, 1), Error);  // no layer 2
  EXPECT_THROW(store.length(99), Error);
  EXPECT_THROW(store.free(99), Error);
}

TEST(LocalKvStore, TruncateReturnsBlocksAndKeepsThePrefix) {
  LocalKvStore store(small_shape(), 1 << 20);
  const SeqId a = store.open();
  store.reserve(a, 10);
  fill(store, a, 0, 10);
  store.commit(a, 10);
  store.truncate(a, 5);  // blocks [0,4) and [4,8) stay; [8,12) returns
  EXPECT_EQ(store.length(a), 5);
  EXPECT_EQ(store.stats().used_bytes, 2u * 2 * small_shape().block_bytes());
  const auto spans = store.locate(a, 0, Part::k, 4, 5);
  EXPECT_EQ(reinterpret_cast<const float*>(spans[0].data)[1], 4000.0f + 10 + 1);
  EXPECT_THROW(store.truncate(a, 6), Error);
  store.reserve(a, 4);
  store.commit(a, 4);
  EXPECT_EQ(store.length(a), 9);
}

}  // namespace
}  // namespace kvpr::kvstore
