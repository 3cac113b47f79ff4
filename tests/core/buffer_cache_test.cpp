// BufferCache's policy against a fake backing that records what it reserves, commits and discards, and the host
// allocator's use of it (whichever build: sanitizer builds do not cache).
#include "core/buffer_cache.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"

using namespace meshdit;

namespace {

// The fake backing: reservations are malloc'd blocks; commits and discards are recorded per byte range, and a
// discard overwrites its bytes (a real one reads back zeros), so a test sees which pages were given back.
struct Reservation {
  size_t bytes = 0;
  std::vector<bool> committed;  // per granule
};
std::map<char*, Reservation>& reserved() {
  static std::map<char*, Reservation> m;
  return m;
}
int g_refuse_reserve = 0, g_refuse_commit = 0;
size_t g_discarded = 0, g_committed = 0;
std::mutex g_mu;
constexpr size_t G = BufferCache::kGranule;

// The reservation holding [p, p + bytes), or null.
Reservation* holding(char* p, size_t bytes) {
  auto it = reserved().upper_bound(p);
  if (it == reserved().begin()) return nullptr;
  --it;
  if (p + bytes > it->first + it->second.bytes) return nullptr;
  return &it->second;
}
char* base_of(char* p) { return std::prev(reserved().upper_bound(p))->first; }

void* fake_reserve(size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  EXPECT_EQ(bytes % G, 0u);
  if (g_refuse_reserve > 0) {
    --g_refuse_reserve;
    return nullptr;
  }
  char* p = static_cast<char*>(std::aligned_alloc(G, bytes));
  reserved()[p] = Reservation{bytes, std::vector<bool>(bytes / G, false)};
  return p;
}
bool fake_commit(void* v, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  char* p = static_cast<char*>(v);
  Reservation* r = holding(p, bytes);
  EXPECT_NE(r, nullptr) << "committed outside a reservation";
  if (!r || g_refuse_commit > 0) {
    if (g_refuse_commit > 0) --g_refuse_commit;
    return false;
  }
  const size_t first = size_t(p - base_of(p)) / G;
  for (size_t i = 0; i < bytes / G; ++i) {
    EXPECT_FALSE(r->committed[first + i]) << "committed twice";
    r->committed[first + i] = true;
  }
  g_committed += bytes;
  return true;
}
void fake_discard(void* v, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  char* p = static_cast<char*>(v);
  Reservation* r = holding(p, bytes);
  ASSERT_NE(r, nullptr) << "discarded outside a reservation";
  const size_t first = size_t(p - base_of(p)) / G;
  for (size_t i = 0; i < (bytes + G - 1) / G; ++i)
    EXPECT_TRUE(r->committed[first + i]) << "discarded uncommitted pages";
  std::memset(p, 0xDD, bytes);
  g_discarded += bytes;
}
void fake_unreserve(void* v, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = reserved().find(static_cast<char*>(v));
  ASSERT_NE(it, reserved().end()) << "released address space the backing never gave";
  EXPECT_EQ(it->second.bytes, bytes) << "released with another size than reserved";
  std::free(it->first);
  reserved().erase(it);
}

constexpr size_t MB = size_t(1) << 20;
const BufferCache::Backing kFake{fake_reserve, fake_commit, fake_discard, fake_unreserve};

struct BufferCacheTest : ::testing::Test {
  void SetUp() override {
    reserved().clear();
    g_refuse_reserve = g_refuse_commit = 0;
    g_discarded = g_committed = 0;
  }
  // Every buffer handed out must lie in committed pages of one reservation; a test writes all of it.
  static void fill(void* v, size_t bytes, int value) {
    char* p = static_cast<char*>(v);
    std::lock_guard<std::mutex> lock(g_mu);
    Reservation* r = holding(p, bytes);
    ASSERT_NE(r, nullptr);
    const size_t first = size_t(p - base_of(p)) / G;
    for (size_t i = 0; i < (bytes + G - 1) / G; ++i) ASSERT_TRUE(r->committed[first + i]) << "uncommitted memory";
    std::memset(p, value, bytes);
  }
};

TEST(BufferCacheClasses, RoundedUpToTheGranule) {
  for (size_t bytes : {size_t(1), size_t(1000), MB, MB + 1, 3 * MB + 12345, 1000 * MB + 7}) {
    const size_t c = BufferCache::size_class(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_LT(c - bytes, G);
    EXPECT_EQ(c % G, 0u);
  }
}

TEST_F(BufferCacheTest, AFreedRangeServesTheNextRequestThatFits) {
  {
    BufferCache c(kFake, 100 * MB, 64 * MB);
    void* a = c.allocate(10 * MB);
    ASSERT_NE(a, nullptr);
    fill(a, 10 * MB, 1);
    c.deallocate(a, 10 * MB);
    EXPECT_EQ(c.stats().cached_bytes, 10 * MB);
    void* b = c.allocate(7 * MB);  // smaller: the same memory, the rest stays free
    EXPECT_EQ(b, a);
    EXPECT_EQ(c.stats().hits, 1u);
    EXPECT_EQ(c.stats().misses, 1u);
    EXPECT_EQ(c.stats().cached_bytes, 3 * MB);
    void* d = c.allocate(3 * MB);  // the rest of it
    EXPECT_EQ(d, static_cast<char*>(a) + 7 * MB);
    EXPECT_EQ(c.stats().hits, 2u);
    fill(b, 7 * MB, 2);
    fill(d, 3 * MB, 3);
    c.deallocate(b, 7 * MB);
    c.deallocate(d, 3 * MB);
    EXPECT_EQ(reserved().size(), 1u);  // one region all along
    EXPECT_EQ(g_discarded, 0u);
  }
  EXPECT_TRUE(reserved().empty()) << "address space never released";
}

TEST_F(BufferCacheTest, BestFitTakesTheSmallestFreeRangeThatHolds) {
  BufferCache c(kFake, 100 * MB, 64 * MB);
  void* big = c.allocate(8 * MB);
  void* sep1 = c.allocate(MB);
  void* small = c.allocate(4 * MB);
  void* sep2 = c.allocate(MB);
  c.deallocate(big, 8 * MB);
  c.deallocate(small, 4 * MB);
  EXPECT_EQ(c.allocate(3 * MB), small);  // not the 8 MB range, nor the untouched rest of the region
  EXPECT_EQ(c.allocate(8 * MB), big);
  for (void* p : {sep1, sep2, small, big}) c.deallocate(p, p == small ? 3 * MB : p == big ? 8 * MB : MB);
}

TEST_F(BufferCacheTest, NeighboursMergeSoALargerRequestFits) {
  BufferCache c(kFake, 100 * MB, 64 * MB);
  void* a = c.allocate(2 * MB);
  void* b = c.allocate(3 * MB);
  void* keep = c.allocate(MB);
  c.deallocate(b, 3 * MB);
  c.deallocate(a, 2 * MB);  // merges with b above it
  void* ab = c.allocate(5 * MB);
  EXPECT_EQ(ab, a);
  EXPECT_EQ(c.stats().hits, 1u);
  c.deallocate(ab, 5 * MB);
  c.deallocate(keep, MB);
}

TEST_F(BufferCacheTest, ARepeatedStepCommitsNothingNew) {
  // The sizes of a step's activations, allocated and freed in the same order every step, with a few held
  // across one another: after the first step, the committed pages serve all of them.
  BufferCache c(kFake, 1000 * MB, 256 * MB);
  const size_t sizes[] = {6 * MB, 42 * MB, 24 * MB, 30 * MB, 15 * MB, 6 * MB, 3 * MB, 12 * MB};
  auto step = [&] {
    std::vector<std::pair<void*, size_t>> held;
    for (size_t i = 0; i < std::size(sizes); ++i) {
      void* p = c.allocate(sizes[i]);
      ASSERT_NE(p, nullptr);
      fill(p, sizes[i], int(i));
      held.push_back({p, sizes[i]});
      if (held.size() == 3) {  // the oldest of three dies
        c.deallocate(held.front().first, held.front().second);
        held.erase(held.begin());
      }
    }
    for (auto& [p, n] : held) c.deallocate(p, n);
  };
  step();
  const size_t committed = c.stats().committed_bytes;
  const uint64_t misses = c.stats().misses;
  for (int i = 0; i < 3; ++i) step();
  EXPECT_EQ(c.stats().committed_bytes, committed);
  EXPECT_EQ(c.stats().misses, misses);
  EXPECT_EQ(g_discarded, 0u);
  // At most held at once: 42 + 24 + 30 MB. Best fit leaves little unused between the ranges.
  EXPECT_GE(committed, 96 * MB);
  EXPECT_LE(double(committed), 96.0 * MB * 1.125);
}

TEST_F(BufferCacheTest, TheLimitDiscardsTheLongestFreedFirst) {
  BufferCache c(kFake, 25 * MB, 64 * MB);
  void* a = c.allocate(10 * MB);
  void* s1 = c.allocate(MB);
  void* b = c.allocate(12 * MB);
  void* s2 = c.allocate(MB);
  void* d = c.allocate(14 * MB);
  void* s3 = c.allocate(MB);
  fill(a, 10 * MB, 1);
  fill(b, 12 * MB, 2);
  fill(d, 14 * MB, 3);
  c.deallocate(a, 10 * MB);
  c.deallocate(b, 12 * MB);  // 10 + 12 fit under 25
  EXPECT_EQ(c.stats().evictions, 0u);
  c.deallocate(d, 14 * MB);  // 10 + 12 + 14 do not: a (freed first) gives its pages back, then b
  const auto s = c.stats();
  EXPECT_LE(s.cached_bytes, 25 * MB);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(g_discarded, 22 * MB);
  EXPECT_EQ(static_cast<unsigned char*>(d)[0], 3);  // the most recent kept its pages
  EXPECT_EQ(static_cast<unsigned char*>(a)[0], 0xDD);
  EXPECT_EQ(c.allocate(14 * MB), d);
  const uint64_t misses = c.stats().misses;
  EXPECT_EQ(c.allocate(10 * MB), a);  // address kept; its pages come back fresh
  EXPECT_EQ(c.stats().misses, misses + 1);
  for (auto [p, n] : {std::pair{d, 14 * MB}, {a, 10 * MB}, {s1, MB}, {s2, MB}, {s3, MB}}) c.deallocate(p, n);
}

TEST_F(BufferCacheTest, LimitZeroCachesNothingAndLoweringItDiscards) {
  BufferCache c(kFake, 64 * MB, 64 * MB);
  void* a = c.allocate(2 * MB);
  void* b = c.allocate(4 * MB);
  c.deallocate(a, 2 * MB);
  c.deallocate(b, 4 * MB);
  EXPECT_EQ(c.stats().cached_bytes, 6 * MB);
  c.set_limit(5 * MB);  // keeps only what fits
  EXPECT_LE(c.stats().cached_bytes, 5 * MB);
  c.set_limit(0);
  EXPECT_EQ(c.stats().cached_bytes, 0u);
  // Caching off: each buffer is its own reservation, returned whole when freed.
  const size_t regions = reserved().size();
  void* d = c.allocate(2 * MB);
  EXPECT_EQ(reserved().size(), regions + 1);
  fill(d, 2 * MB, 1);
  c.deallocate(d, 2 * MB);
  EXPECT_EQ(reserved().size(), regions);
}

TEST_F(BufferCacheTest, OutOfMemoryIsNullAndLeavesTheCacheUsable) {
  BufferCache c(kFake, 64 * MB, 16 * MB);
  void* a = c.allocate(8 * MB);
  ASSERT_NE(a, nullptr);
  g_refuse_reserve = 1;  // a request larger than the region needs address space of its own
  EXPECT_EQ(c.allocate(32 * MB), nullptr);
  g_refuse_commit = 1;  // pages past the committed ones refused
  EXPECT_EQ(c.allocate(6 * MB), nullptr);
  void* b = c.allocate(6 * MB);  // the same request once memory is there again
  ASSERT_NE(b, nullptr);
  fill(b, 6 * MB, 1);
  void* big = c.allocate(32 * MB);
  ASSERT_NE(big, nullptr);
  fill(big, 32 * MB, 2);
  EXPECT_EQ(reserved().size(), 2u);
  c.deallocate(a, 8 * MB);
  c.deallocate(b, 6 * MB);
  c.deallocate(big, 32 * MB);
}

TEST_F(BufferCacheTest, ReleaseAllKeepsBuffersInUse) {
  BufferCache c(kFake, 64 * MB, 8 * MB);
  void* in_use = c.allocate(2 * MB);
  void* freed = c.allocate(2 * MB);
  void* other_region = c.allocate(12 * MB);
  fill(in_use, 2 * MB, 7);
  c.deallocate(freed, 2 * MB);
  c.deallocate(other_region, 12 * MB);
  EXPECT_EQ(reserved().size(), 2u);
  c.release_all();
  EXPECT_EQ(c.stats().cached_bytes, 0u);
  EXPECT_EQ(c.stats().evictions, 0u);  // a release on request is not an eviction
  EXPECT_EQ(reserved().size(), 1u);    // the unused second region's address space went back
  EXPECT_EQ(static_cast<unsigned char*>(in_use)[2 * MB - 1], 7);
  c.deallocate(in_use, 2 * MB);
  c.release_all();
}

TEST_F(BufferCacheTest, ThreadsShareOneCache) {
  BufferCache c(kFake, 256 * MB, 256 * MB);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&c, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t bytes = size_t(1 + (i + t) % 5) * MB;
        auto* p = static_cast<unsigned char*>(c.allocate(bytes));
        p[0] = p[bytes - 1] = 7;
        c.deallocate(p, bytes);
      }
    });
  for (auto& th : threads) th.join();
  const auto s = c.stats();
  EXPECT_EQ(s.hits + s.misses, 800u);
  EXPECT_GT(s.hits, 700u);
  // Four threads hold at most 4 x 5 MB at once; how the ranges interleave decides the rest (bounded, not exact).
  EXPECT_LE(s.committed_bytes, 2 * 4 * 5 * MB);
  c.release_all();
}

TEST(HostAllocator, LargeTensorsReuseTheirBuffersUnlessCachingIsOff) {
  set_host_cache_limit(64 * MB);
  release_host_cache();
  const HostCacheStats before = host_cache_stats();
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({int64_t(4 * MB / 4)}, DType::F32);
    first = t.raw();
    t.f32()[0] = 1.0f;
  }
  Tensor again = Tensor::empty({int64_t(4 * MB / 4)}, DType::F32);
  const HostCacheStats after = host_cache_stats();
  if (before.limit_bytes == 0) {
    // A sanitizer build: every buffer is the C library's, so use after free stays detectable.
    EXPECT_EQ(after.hits, before.hits);
  } else {
    EXPECT_EQ(again.raw(), first);
    EXPECT_EQ(after.hits, before.hits + 1);
  }
  EXPECT_EQ(reinterpret_cast<uintptr_t>(again.raw()) % 64, 0u);
  release_host_cache();
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
}

}  // namespace
