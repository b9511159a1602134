#include "kvpr/kvstore/page_pool.h"

#include <gtest/gtest.h>

#include "kvpr/common/error.h"
#include "kvpr/kvstore/local_kv_store.h"
#include "kvstore_test_support.h"

namespace kvpr::kvstore {
namespace {

using testing::count_bad_rows;
using testing::fill;
using testing::small_shape;

TEST(PagePool, AllocatesAllOrNothingAndMapsPointersBack) {
  PagePool pool(1024, 4 * 1024 + 100);
  EXPECT_EQ(pool.n_pages(), 4u);
  EXPECT_EQ(pool.capacity_bytes(), 4u * 1024 + 100);
  std::vector<std::size_t> pages;
  ASSERT_TRUE(pool.allocate(3, pages));
  EXPECT_FALSE(pool.allocate(2, pages));  // only 1 left: nothing taken
  EXPECT_EQ(pages.size(), 3u);
  EXPECT_EQ(pool.free_pages(), 1u);
  EXPECT_EQ(pool.allocation_failures(), 1u);
  EXPECT_EQ(pool.used_bytes(), 3u * 1024);
  EXPECT_EQ(pool.offset_of(pool.page(pages[1]) + 17), pool.offset_of_page(pages[1]) + 17);
  int outside = 0;
  EXPECT_FALSE(pool.offset_of(&outside).has_value());
  pool.release(pages);
  EXPECT_EQ(pool.used_bytes(), 0u);
}

TEST(PagePool, ViewsOfDifferentShapesShareOnePoolWithoutOverlap) {
  PagePool pool(4096, 64 * 4096);
  StoreShape wide = small_shape();
  wide.h = 32;
  wide.h_kv = 16;
  wide.block_tokens = 4096 / static_cast<std::int64_t>((32 + 2 * 16) * 4);  // fills a page
  StoreShape narrow = small_shape(DType::f32, 3);
  narrow.block_tokens = 7;  // a block smaller than a page
  auto a = std::make_unique<LocalKvStore>(wide, pool);
  LocalKvStore b(narrow, pool);
  const SeqId sa = a->open();
  const SeqId sb = b.open();
  EXPECT_NE(sa, sb);  // ids are unique across the pool
  a->reserve(sa, 40);
  b.reserve(sb, 30);
  fill(*a, sa, 0, 40, 1);
  fill(b, sb, 0, 30, 2);
  a->commit(sa, 40);
  b.commit(sb, 30);
  EXPECT_EQ(count_bad_rows(*a, sa, 0, 40, 1), 0);
  EXPECT_EQ(count_bad_rows(b, sb, 0, 30, 2), 0);
  EXPECT_EQ(a->stats().used_bytes, 2u * 3 * 4096);  // 2 layers x 3 blocks of 16 tokens
  EXPECT_EQ(b.stats().used_bytes, 3u * 5 * 4096);   // 3 layers x 5 blocks of 7 tokens
  EXPECT_EQ(pool.used_bytes(), a->stats().used_bytes + b.stats().used_bytes);
  a.reset();  // a view going away returns its pages
  EXPECT_EQ(pool.used_bytes(), b.stats().used_bytes);
  EXPECT_EQ(count_bad_rows(b, sb, 0, 30, 2), 0);

  StoreShape too_big = wide;
  too_big.block_tokens = 1000;
  EXPECT_THROW(LocalKvStore(too_big, pool), Error);
}

TEST(LocalKvStore, ReserveBlocksReportsTheNewBlocksLayerMajor) {
  LocalKvStore store(small_shape(), 1 << 20);
  const SeqId a = store.open();
  const Reservation first = store.reserve_blocks({&a, 1}, 5).front();  // 2 blocks of 4 per layer
  EXPECT_EQ(first.reserved_tokens, 5);
  EXPECT_EQ(first.first_block, 0);
  EXPECT_EQ(first.blocks_per_layer, 2);
  ASSERT_EQ(first.offsets.size(), 4u);
  store.commit(a, 5);
  const Reservation again =
      store.reserve_blocks({&a, 1}, 3).front();  // up to 8 tokens: no new block
  EXPECT_EQ(again.blocks_per_layer, 0);
  EXPECT_EQ(again.first_block, 2);
  const Reservation more = store.reserve_blocks({&a, 1}, 4).front();  // 9 tokens: block 2
  EXPECT_EQ(more.first_block, 2);
  ASSERT_EQ(more.offsets.size(), 2u);
  const auto spans = store.locate(a, 1, Part::act, 8, 9);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(store.pool().offset_of(spans[0].data), more.offsets[1]);  // layer 1's new block
}

}  // namespace
}  // namespace kvpr::kvstore
