// The pool's contract (src/core/thread_pool.h): coverage, part numbering, nesting, exceptions, resizes.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace meshdit {
namespace {

// Restores the pool size a test found, so that the other suites run at their usual count.
struct PoolSize {
  int before = num_threads();
  ~PoolSize() { set_num_threads(before); }
};

// Every index exactly once, parts distinct and below num_threads(), at sizes around the part count.
void check_cover(int64_t n, int64_t min_chunk) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  std::vector<std::atomic<int>> parts(static_cast<size_t>(num_threads()));
  parallel_for(n, [&](int64_t b, int64_t e, int part) {
    ASSERT_GE(part, 0);
    ASSERT_LT(part, num_threads());
    parts[size_t(part)].fetch_add(1);
    ASSERT_LE(0, b);
    ASSERT_LT(b, e);
    ASSERT_LE(e, n);
    for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
  }, min_chunk);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "n=" << n << " index " << i;
  for (auto& p : parts) ASSERT_LE(p.load(), 1) << "a part number was used twice";
}

TEST(ThreadPool, EveryIndexOnceAtEverySize) {
  PoolSize guard;
  for (int t : {1, 2, 3, 5}) {
    set_num_threads(t);
    for (int64_t n : {1, 2, 3, 4, 5, 7, 64, 1000, 4099})
      for (int64_t chunk : {int64_t(1), int64_t(3), int64_t(100), n}) check_cover(n, chunk);
  }
}

TEST(ThreadPool, EmptyRangeCallsNothing) {
  bool called = false;
  parallel_for(0, [&](int64_t, int64_t, int) { called = true; });
  parallel_for(-5, [&](int64_t, int64_t, int) { called = true; });
  EXPECT_FALSE(called);
}

// min_chunk at or above n: one part, on the calling thread.
TEST(ThreadPool, BelowGrainRunsOnCaller) {
  PoolSize guard;
  set_num_threads(4);
  const auto caller = std::this_thread::get_id();
  int calls = 0;
  parallel_for(100, [&](int64_t b, int64_t e, int part) {
    ++calls;
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 100);
    EXPECT_EQ(part, 0);
  }, 100);
  EXPECT_EQ(calls, 1);
}

// The part -> range mapping depends only on (n, min_chunk, threads), whichever thread runs a part:
// callers that seed per part (bench random-checkpoint) get the same values every run.
TEST(ThreadPool, PartRangesAreDeterministic) {
  PoolSize guard;
  set_num_threads(3);
  for (int round = 0; round < 20; ++round) {
    std::vector<int64_t> begin(3, -1);
    parallel_for(10, [&](int64_t b, int64_t, int part) { begin[size_t(part)] = b; });
    EXPECT_EQ(begin, (std::vector<int64_t>{0, 3, 6}));
  }
}

// Nested calls run inline, covering their whole range as part 0.
TEST(ThreadPool, NestedCallsRunInline) {
  PoolSize guard;
  set_num_threads(3);
  std::vector<std::atomic<int>> hits(30 * 50);
  parallel_for(30, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const auto self = std::this_thread::get_id();
      parallel_for(50, [&](int64_t b2, int64_t e2, int part) {
        EXPECT_EQ(std::this_thread::get_id(), self);
        EXPECT_EQ(part, 0);
        for (int64_t j = b2; j < e2; ++j) hits[size_t(i * 50 + j)].fetch_add(1);
      });
    }
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

// The first exception reaches the caller after every part has run; the pool stays usable.
TEST(ThreadPool, ExceptionPropagatesAfterAllParts) {
  PoolSize guard;
  for (int t : {1, 2, 4}) {
    set_num_threads(t);
    std::atomic<int> ran{0};
    EXPECT_THROW(parallel_for(t, [&](int64_t b, int64_t, int) {
      ran.fetch_add(1);
      if (b == 0) throw std::runtime_error("part 0 failed");
    }), std::runtime_error);
    EXPECT_EQ(ran.load(), t);
    check_cover(1000, 1);
  }
}

// Back-to-back small calls: the spin/sleep hand-off must neither lose nor repeat a job, including
// with serial gaps long enough for the workers to fall asleep in between.
TEST(ThreadPool, ManyBackToBackSmallCalls) {
  PoolSize guard;
  set_num_threads(2);
  std::vector<int> y(64, 0);
  for (int call = 0; call < 20000; ++call) {
    parallel_for(int64_t(y.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) ++y[size_t(i)];
    });
    if (call % 5000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int v : y) ASSERT_EQ(v, 20000);
}

// Two threads of the application calling at once: one gets the workers, the other runs inline.
TEST(ThreadPool, ConcurrentCallersAreSafe) {
  PoolSize guard;
  set_num_threads(3);
  auto work = [] {
    for (int k = 0; k < 500; ++k) check_cover(257, 1);
  };
  std::thread other(work);
  work();
  other.join();
}

TEST(ThreadPool, ThreadCountChanges) {
  PoolSize guard;
  for (int t : {1, 4, 2, 2, 7, 1, 3}) {
    set_num_threads(t);
    EXPECT_EQ(num_threads(), t);
    check_cover(777, 1);
  }
  set_num_threads(0);
  EXPECT_EQ(num_threads(), 1);
}

TEST(ThreadPool, GrainForScalesWithCost) {
  EXPECT_EQ(grain_for(kMinPartNs), 1);
  EXPECT_EQ(grain_for(kMinPartNs * 10), 1);
  EXPECT_EQ(grain_for(1.0), int64_t(kMinPartNs));
  EXPECT_GT(grain_for(0.25), grain_for(1.0));
  EXPECT_GE(grain_for(0.0), 1);
}

}  // namespace
}  // namespace meshdit
