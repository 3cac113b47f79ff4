// GraphPool's bookkeeping (core/graph_pool.h), driven as the CUDA allocator drives it, with fake addresses: the
// plan a rehearsal yields, what a capture takes and gives back, what it holds, and what closing returns.
#include "core/graph_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

using namespace meshdit;

namespace {

void* addr(uintptr_t a) { return reinterpret_cast<void*>(a); }

}  // namespace

TEST(GraphPool, RehearsalPlansThePeakPerSizeClass) {
  GraphPool pool;
  pool.note_free(addr(0x9000));  // a block from before the rehearsal: not the forward's
  pool.note_alloc(addr(0x1000), 512);
  pool.note_alloc(addr(0x2000), 512);
  pool.note_alloc(addr(0x3000), 4096);
  pool.note_free(addr(0x1000));
  pool.note_alloc(addr(0x1000), 512);  // reused: still two of 512 at once
  pool.note_free(addr(0x2000));
  pool.note_free(addr(0x3000));
  pool.note_alloc(addr(0x4000), 4096);  // the output, alive at the end
  const std::map<size_t, int64_t> want{{512, 2}, {4096, 1}};
  EXPECT_EQ(pool.plan(), want);
  EXPECT_EQ(pool.plan_bytes(), 2 * 512 + 4096u);
}

TEST(GraphPool, CaptureTakesReservedBlocksAndMissesBeyondThem) {
  GraphPool pool;
  pool.add_reserved(addr(0x1000), 512);
  pool.add_reserved(addr(0x2000), 512);
  pool.add_reserved(addr(0x3000), 4096);
  EXPECT_EQ(pool.reserved_bytes(), 2 * 512 + 4096u);
  std::set<void*> got{pool.take(512), pool.take(512)};
  EXPECT_EQ(got, (std::set<void*>{addr(0x1000), addr(0x2000)}));
  EXPECT_EQ(pool.take(512), nullptr);
  EXPECT_EQ(pool.take(1024), nullptr);  // no block of that class, even with larger ones free
  EXPECT_EQ(pool.misses(), 2u);
  EXPECT_EQ(pool.in_use_blocks(), 2u);
  // A block freed during the capture is reused by the next allocation of its class (replays run in order).
  EXPECT_TRUE(pool.give_back(addr(0x1000)));
  EXPECT_EQ(pool.take(512), addr(0x1000));
  EXPECT_TRUE(pool.owns(addr(0x3000)));
  EXPECT_FALSE(pool.owns(addr(0x5000)));
}

TEST(GraphPool, GivesBackOnlyItsBlocksInUse) {
  GraphPool pool;
  pool.add_reserved(addr(0x1000), 512);
  EXPECT_FALSE(pool.give_back(addr(0x1000)));  // free already: a second free is not taken twice
  EXPECT_FALSE(pool.give_back(addr(0x7000)));  // not the pool's
  void* p = pool.take(512);
  EXPECT_TRUE(pool.give_back(p));
  EXPECT_FALSE(pool.give_back(p));
  EXPECT_EQ(pool.take(512), p);
}

TEST(GraphPool, HeldBlocksAreNeverReusedAndComeBackOnClose) {
  GraphPool pool;
  pool.add_reserved(addr(0x1000), 512);
  pool.hold(addr(0x8000), 512);  // allocated before the capture, freed during it
  EXPECT_TRUE(pool.owns(addr(0x8000)));
  EXPECT_EQ(pool.take(512), addr(0x1000));
  EXPECT_EQ(pool.take(512), nullptr);          // the held block is not handed out
  EXPECT_FALSE(pool.give_back(addr(0x8000)));  // nor taken back as a pool block
  auto back = pool.close();
  std::sort(back.begin(), back.end());
  // 0x1000 is still in use (the graph's output a caller kept): forgotten, its later free is the allocator's.
  EXPECT_EQ(back, (std::vector<std::pair<void*, size_t>>{{addr(0x8000), 512}}));
  EXPECT_FALSE(pool.owns(addr(0x1000)));
  EXPECT_FALSE(pool.give_back(addr(0x1000)));
  EXPECT_EQ(pool.reserved_bytes(), 0u);
  EXPECT_EQ(pool.in_use_blocks(), 0u);
}

TEST(GraphPool, CloseReturnsTheFreeBlocks) {
  GraphPool pool;
  pool.add_reserved(addr(0x1000), 512);
  pool.add_reserved(addr(0x2000), 4096);
  void* p = pool.take(4096);
  EXPECT_TRUE(pool.give_back(p));
  auto back = pool.close();
  std::sort(back.begin(), back.end());
  EXPECT_EQ(back, (std::vector<std::pair<void*, size_t>>{{addr(0x1000), 512}, {addr(0x2000), 4096}}));
  EXPECT_TRUE(pool.close().empty());
}
