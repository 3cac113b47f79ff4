// The denoising loop's per-step hook: installed per thread, restored on scope exit, and its error (a cancel)
// recognisable after context is added.
#include "core/step_watch.h"

#include <gtest/gtest.h>

#include <thread>

using namespace meshdit;

TEST(StepWatch, NoWatcherIsOk) { EXPECT_TRUE(notify_step(0, 4, Tensor()).ok()); }

TEST(StepWatch, ScopedWatcherSeesStepsAndCanCancel) {
  std::vector<int64_t> seen;
  {
    ScopedStepWatch watch([&](int64_t step, int64_t steps, const Tensor&) -> Status {
      seen.push_back(step);
      EXPECT_EQ(steps, 4);
      if (step == 2) return cancelled_error();
      return ok_status();
    });
    EXPECT_TRUE(notify_step(0, 4, Tensor()).ok());
    EXPECT_TRUE(notify_step(1, 4, Tensor()).ok());
    auto st = notify_step(2, 4, Tensor());
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(is_cancelled(st.error()));
    EXPECT_TRUE(is_cancelled(st.error().context("FluxPipeline").context("generating")));
    EXPECT_FALSE(is_cancelled(make_error("out of memory")));
  }
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_TRUE(notify_step(2, 4, Tensor()).ok()) << "the watcher outlived its scope";
}

TEST(StepWatch, OtherThreadsAreNotWatched) {
  int calls = 0;
  ScopedStepWatch watch([&](int64_t, int64_t, const Tensor&) -> Status {
    ++calls;
    return cancelled_error();
  });
  bool other_ok = false;
  std::thread t([&] { other_ok = notify_step(0, 1, Tensor()).ok(); });
  t.join();
  EXPECT_TRUE(other_ok);
  EXPECT_EQ(calls, 0);
}

TEST(StepWatch, NestedWatchersRestoreTheOuterOne) {
  int outer = 0, inner = 0;
  ScopedStepWatch a([&](int64_t, int64_t, const Tensor&) -> Status {
    ++outer;
    return ok_status();
  });
  {
    ScopedStepWatch b([&](int64_t, int64_t, const Tensor&) -> Status {
      ++inner;
      return ok_status();
    });
    (void)notify_step(0, 1, Tensor());
  }
  (void)notify_step(0, 1, Tensor());
  EXPECT_EQ(outer, 1);
  EXPECT_EQ(inner, 1);
}
