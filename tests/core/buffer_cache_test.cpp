// BufferCache's policy against a fake backing that counts what it hands out, and the host allocator's use of
// it (whichever build: sanitizer builds do not cache).
#include "core/buffer_cache.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"

using namespace meshdit;

namespace {

// Live buffers of the fake backing: pointer -> bytes.
std::map<void*, size_t>& live() {
  static std::map<void*, size_t> m;
  return m;
}
int g_fail_next = 0;  // acquisitions to refuse (out of memory)
std::mutex g_mu;      // the cache calls its backing outside its own lock

void* fake_acquire(size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_fail_next > 0) {
    --g_fail_next;
    return nullptr;
  }
  void* p = std::malloc(bytes);
  live()[p] = bytes;
  return p;
}
void fake_release(void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = live().find(p);
  ASSERT_NE(it, live().end()) << "released a buffer the backing never gave";
  EXPECT_EQ(it->second, bytes) << "released with another size than acquired";
  live().erase(it);
  std::free(p);
}

constexpr size_t MB = size_t(1) << 20;

struct BufferCacheTest : ::testing::Test {
  void SetUp() override {
    live().clear();
    g_fail_next = 0;
  }
  void TearDown() override { EXPECT_TRUE(live().empty()) << live().size() << " buffers never released"; }
};

TEST(BufferCacheClasses, AtMostAnEighthMoreAndNeverLess) {
  for (size_t bytes : {size_t(1), size_t(1000), MB, MB + 1, 3 * MB + 12345, 63 * MB, 64 * MB + 1, 1000 * MB + 7}) {
    const size_t c = BufferCache::size_class(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_EQ(c % (64 << 10), 0u) << bytes;
    if (bytes >= MB) {
      EXPECT_LE(double(c), double(bytes) * 1.125) << bytes;
    }
  }
  // Nearby sizes share a class, so a buffer serves requests that differ by a few rows.
  EXPECT_EQ(BufferCache::size_class(63 * MB), BufferCache::size_class(64 * MB));
}

TEST_F(BufferCacheTest, AFreedBufferServesTheNextRequestOfItsClass) {
  BufferCache c({fake_acquire, fake_release}, 100 * MB);
  void* a = c.allocate(10 * MB);
  ASSERT_NE(a, nullptr);
  std::memset(a, 1, 10 * MB);
  c.deallocate(a, 10 * MB);
  EXPECT_EQ(c.stats().cached_bytes, BufferCache::size_class(10 * MB));
  void* b = c.allocate(10 * MB - 4096);  // same class
  EXPECT_EQ(b, a);
  EXPECT_EQ(c.stats().hits, 1u);
  EXPECT_EQ(c.stats().misses, 1u);
  EXPECT_EQ(c.stats().cached_bytes, 0u);
  void* other = c.allocate(20 * MB);  // another class: fresh
  EXPECT_NE(other, a);
  EXPECT_EQ(c.stats().misses, 2u);
  c.deallocate(b, 10 * MB - 4096);
  c.deallocate(other, 20 * MB);
}

TEST_F(BufferCacheTest, TheLimitEvictsTheLeastRecentlyFreed) {
  BufferCache c({fake_acquire, fake_release}, 25 * MB);
  void* a = c.allocate(10 * MB);
  void* b = c.allocate(12 * MB);
  void* d = c.allocate(14 * MB);
  c.deallocate(a, 10 * MB);
  c.deallocate(b, 12 * MB);  // 10 + 12 fit under 25
  EXPECT_EQ(c.stats().evictions, 0u);
  c.deallocate(d, 14 * MB);  // 10 + 12 + 14 do not: a (oldest) goes, then b
  const auto s = c.stats();
  EXPECT_LE(s.cached_bytes, 25 * MB);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(live().size(), 1u);
  EXPECT_EQ(c.allocate(14 * MB), d);  // the most recent stayed
  c.deallocate(d, 14 * MB);
}

TEST_F(BufferCacheTest, ABufferOverTheLimitIsReleasedAtOnce) {
  BufferCache c({fake_acquire, fake_release}, 5 * MB);
  void* a = c.allocate(8 * MB);
  c.deallocate(a, 8 * MB);
  EXPECT_EQ(c.stats().cached_bytes, 0u);
  EXPECT_TRUE(live().empty());
}

TEST_F(BufferCacheTest, LimitZeroCachesNothingAndLoweringItReleases) {
  BufferCache c({fake_acquire, fake_release}, 64 * MB);
  void* a = c.allocate(2 * MB);
  void* b = c.allocate(4 * MB);
  c.deallocate(a, 2 * MB);
  c.deallocate(b, 4 * MB);
  EXPECT_EQ(live().size(), 2u);
  c.set_limit(3 * MB);  // keeps only what fits: the newer 4 MB goes too, oldest first
  EXPECT_LE(c.stats().cached_bytes, 3 * MB);
  c.set_limit(0);
  EXPECT_TRUE(live().empty());
  void* d = c.allocate(2 * MB);
  c.deallocate(d, 2 * MB);
  EXPECT_TRUE(live().empty());
}

TEST_F(BufferCacheTest, OutOfMemoryReleasesTheCacheAndTriesAgain) {
  BufferCache c({fake_acquire, fake_release}, 64 * MB);
  void* a = c.allocate(8 * MB);
  c.deallocate(a, 8 * MB);
  g_fail_next = 1;  // the backing refuses once: the cached 8 MB is released and the retry succeeds
  void* b = c.allocate(16 * MB);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(c.stats().cached_bytes, 0u);
  EXPECT_EQ(live().size(), 1u);
  g_fail_next = 2;  // refused twice: null, as an allocator reports out of memory
  EXPECT_EQ(c.allocate(32 * MB), nullptr);
  c.deallocate(b, 16 * MB);
}

TEST_F(BufferCacheTest, ReleaseAllKeepsBuffersInUse) {
  BufferCache c({fake_acquire, fake_release}, 64 * MB);
  void* in_use = c.allocate(2 * MB);
  void* freed = c.allocate(2 * MB);
  c.deallocate(freed, 2 * MB);
  c.release_all();
  EXPECT_EQ(live().size(), 1u);
  EXPECT_EQ(live().count(in_use), 1u);
  EXPECT_EQ(c.stats().evictions, 0u);
  c.deallocate(in_use, 2 * MB);
  c.release_all();
}

TEST_F(BufferCacheTest, ThreadsShareOneCache) {
  BufferCache c({fake_acquire, fake_release}, 256 * MB);
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
  EXPECT_GT(s.hits, 700u);  // five classes, at most four threads' worth of fresh buffers each
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
