// UniqueHandle (kvpr/common/unique_handle.h): exactly one release per handle, whatever the owner
// goes through (destruction, move construction, move assignment over a held handle, reset,
// self-move), no release of the empty value, the deleter's state travelling with its handle, and
// release() giving ownership up.
#include "kvpr/common/unique_handle.h"

#include <gtest/gtest.h>

#include <type_traits>
#include <utility>
#include <vector>

namespace kvpr {
namespace {

// Records every handle it releases, tagged with its own id, in a log the test owns.
struct Recorder {
  std::vector<std::pair<int, int>>* log = nullptr;  // (deleter id, handle)
  int id = 0;
  void operator()(int handle) const noexcept { log->push_back({id, handle}); }
};

using Owner = UniqueHandle<int, Recorder>;
using Log = std::vector<std::pair<int, int>>;

static_assert(!std::is_copy_constructible_v<Owner> && !std::is_copy_assignable_v<Owner>);
static_assert(std::is_nothrow_move_constructible_v<Owner> &&
              std::is_nothrow_move_assignable_v<Owner>);
static_assert(std::is_nothrow_destructible_v<Owner>);

TEST(UniqueHandle, ReleasesOnceWhenItDies) {
  Log log;
  { Owner owner(7, Recorder{&log, 1}); }
  EXPECT_EQ(log, (Log{{1, 7}}));
}

TEST(UniqueHandle, EmptyValueIsNeverReleased) {
  Log log;
  {
    Owner empty;
    Owner zero(0, Recorder{&log, 1});
    EXPECT_FALSE(empty);
    EXPECT_FALSE(zero);
  }
  EXPECT_TRUE(log.empty());
}

TEST(UniqueHandle, MoveTransfersOwnershipAndTheDeleter) {
  Log log;
  {
    Owner a(7, Recorder{&log, 1});
    Owner b(std::move(a));
    EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from holds nothing, by contract
    EXPECT_EQ(b.get(), 7);
    EXPECT_TRUE(log.empty());
  }
  EXPECT_EQ(log, (Log{{1, 7}}));
}

TEST(UniqueHandle, MoveAssignmentReleasesTheOldHandleWithItsOwnDeleter) {
  Log log;
  {
    Owner a(7, Recorder{&log, 1});
    Owner b(8, Recorder{&log, 2});
    b = std::move(a);
    EXPECT_EQ(log, (Log{{2, 8}}));
    EXPECT_EQ(b.get(), 7);
    EXPECT_EQ(b.deleter().id, 1);
    auto& self = b;
    b = std::move(self);  // self-move keeps the handle
    EXPECT_EQ(b.get(), 7);
    EXPECT_EQ(log.size(), 1u);
  }
  EXPECT_EQ(log, (Log{{2, 8}, {1, 7}}));
}

TEST(UniqueHandle, ResetAndReleaseGiveUpTheHandle) {
  Log log;
  {
    Owner a(7, Recorder{&log, 1});
    a.reset(9);
    EXPECT_EQ(log, (Log{{1, 7}}));
    a.reset();
    EXPECT_EQ(log, (Log{{1, 7}, {1, 9}}));
    a.reset(11);
    EXPECT_EQ(a.release(), 11);  // the caller owns 11 now: never released by `a`
    EXPECT_FALSE(a);
  }
  EXPECT_EQ(log, (Log{{1, 7}, {1, 9}}));
}

// A handle of several fields (an allocation and its size): empty is the value-initialised struct.
struct Range {
  void* data = nullptr;
  std::size_t bytes = 0;
  bool operator==(const Range&) const = default;
};

struct CountFrees {
  int* frees = nullptr;
  void operator()(const Range&) const noexcept { ++*frees; }
};

TEST(UniqueHandle, HoldsStructHandles) {
  int frees = 0;
  int storage = 0;
  {
    UniqueHandle<Range, CountFrees> a(Range{&storage, 4}, CountFrees{&frees});
    UniqueHandle<Range, CountFrees> b;
    b = std::move(a);
    EXPECT_EQ(b.get().bytes, 4u);
    EXPECT_EQ(a.get(), Range{});  // NOLINT(bugprone-use-after-move)
  }
  EXPECT_EQ(frees, 1);
}

}  // namespace
}  // namespace kvpr
