// The server's job queue with a stand-in runner (no model): order, progress, previews, cancel, a full
// queue, failures and shutdown.
#include "app/serve_jobs.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "core/step_watch.h"

using namespace meshdit;
using namespace std::chrono_literals;

namespace {

ImageRequest request(const std::string& prompt, int64_t steps) {
  ImageRequest r;
  r.options.prompt = {prompt};
  r.options.steps = steps;
  return r;
}

// Runs `steps` steps of `step_time` each, a preview when asked; the image is the prompt's bytes. A prompt
// "fail" fails.
struct FakeRunner {
  std::chrono::milliseconds step_time{5};
  std::atomic<int> started{0};
  std::vector<std::string> order;
  std::mutex mu;
  Result<std::vector<Png>> operator()(const ImageRequest& r, JobProgress& p) {
    ++started;
    {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(r.options.prompt[0]);
    }
    if (r.options.prompt[0] == "fail") return make_error("FluxPipeline: out of memory");
    for (int64_t i = 0; i < r.options.steps; ++i) {
      std::this_thread::sleep_for(step_time);
      Png preview;
      if (p.wants_preview(i, r.options.steps)) preview = {uint8_t(i)};
      // The loop's caller adds context to a cancel, as a pipeline does.
      if (auto st = p.step(i, r.options.steps, preview); !st.ok()) return st.error().context("generating");
    }
    const std::string& s = r.options.prompt[0];
    return std::vector<Png>{Png(s.begin(), s.end())};
  }
};

JobSnapshot wait_finished(JobQueue& q, const std::string& id) {
  uint64_t seen = 0;
  for (int i = 0; i < 2000; ++i) {
    auto s = q.wait(id, seen, 50ms);
    EXPECT_TRUE(s.has_value());
    if (!s || finished(s->state)) return s.value_or(JobSnapshot{});
    seen = s->version;
  }
  ADD_FAILURE() << "job " << id << " did not finish";
  return {};
}

}  // namespace

TEST(ServeJobs, RunsInOrderAndReportsProgress) {
  FakeRunner fake;
  JobQueue q([&](const ImageRequest& r, JobProgress& p) { return fake(r, p); });
  auto a = q.submit(request("a", 4));
  auto b = q.submit(request("b", 3));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  const JobSnapshot sa = wait_finished(q, *a), sb = wait_finished(q, *b);
  EXPECT_EQ(sa.state, JobState::Done) << sa.error;
  EXPECT_EQ(sb.state, JobState::Done) << sb.error;
  EXPECT_EQ(sa.step, 4);
  EXPECT_EQ(sa.steps, 4);
  ASSERT_EQ(sa.images.size(), 1u);
  EXPECT_EQ(sa.images[0], Png({'a'}));
  EXPECT_EQ(sb.images[0], Png({'b'}));
  EXPECT_EQ(fake.order, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(q.get("job-nope").has_value());
}

TEST(ServeJobs, ProgressEtaAndPreviewWhileRunning) {
  FakeRunner fake;
  fake.step_time = 40ms;
  JobQueueOptions o;
  o.preview_every = 2;
  JobQueue q([&](const ImageRequest& r, JobProgress& p) { return fake(r, p); }, o);
  auto id = q.submit(request("p", 6));
  ASSERT_TRUE(id.ok());
  uint64_t seen = 0;
  bool saw_running = false, saw_preview = false, saw_eta = false;
  for (;;) {
    auto s = q.wait(*id, seen, 1000ms);
    ASSERT_TRUE(s.has_value());
    seen = s->version;
    if (s->state == JobState::Running && s->step > 0) {
      saw_running = true;
      saw_eta |= s->eta_s > 0 && s->step < 6;
      if (!s->preview.empty()) {
        saw_preview = true;
        EXPECT_EQ(s->preview_step % 2, 0) << "previews every 2 steps";
      }
    }
    if (finished(s->state)) break;
  }
  EXPECT_TRUE(saw_running && saw_preview && saw_eta);
}

TEST(ServeJobs, CancelQueuedAndRunning) {
  FakeRunner fake;
  fake.step_time = 30ms;
  JobQueue q([&](const ImageRequest& r, JobProgress& p) { return fake(r, p); });
  auto running = q.submit(request("long", 200));
  auto queued = q.submit(request("queued", 2));
  ASSERT_TRUE(running.ok() && queued.ok());
  while (q.get(*running)->state != JobState::Running) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(q.get(*queued)->queue_position, 1);
  EXPECT_TRUE(q.cancel(*queued));
  EXPECT_EQ(q.get(*queued)->state, JobState::Cancelled);
  EXPECT_TRUE(q.cancel(*running, "client went away"));
  const JobSnapshot s = wait_finished(q, *running);
  EXPECT_EQ(s.state, JobState::Cancelled);
  EXPECT_EQ(s.error, "client went away");
  EXPECT_LT(s.step, 200) << "stopped between steps";
  EXPECT_FALSE(q.cancel(*running)) << "a finished job cannot be cancelled";
  EXPECT_EQ(fake.order, std::vector<std::string>{"long"}) << "a cancelled queued job never runs";
}

TEST(ServeJobs, FullQueueAndFailure) {
  FakeRunner fake;
  fake.step_time = 20ms;
  JobQueueOptions o;
  o.capacity = 2;
  JobQueue q([&](const ImageRequest& r, JobProgress& p) { return fake(r, p); }, o);
  auto first = q.submit(request("fail", 1));
  ASSERT_TRUE(first.ok());
  const JobSnapshot f = wait_finished(q, *first);
  EXPECT_EQ(f.state, JobState::Failed);
  EXPECT_NE(f.error.find("out of memory"), std::string::npos);

  auto busy = q.submit(request("busy", 100));
  while (q.get(*busy)->state != JobState::Running) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(q.submit(request("w1", 1)).ok());
  EXPECT_TRUE(q.submit(request("w2", 1)).ok());
  auto full = q.submit(request("w3", 1));
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.error().message.find("full"), std::string::npos);
  EXPECT_EQ(q.shutdown(true), "cancelled");
  EXPECT_EQ(q.get(*busy)->state, JobState::Cancelled);
  EXPECT_FALSE(q.submit(request("late", 1)).ok());
}

TEST(ServeJobs, ShutdownLetsTheRunningJobFinish) {
  FakeRunner fake;
  fake.step_time = 10ms;
  JobQueue q([&](const ImageRequest& r, JobProgress& p) { return fake(r, p); });
  auto id = q.submit(request("x", 10));
  while (q.get(*id)->state != JobState::Running) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(q.shutdown(false), "finished");
  EXPECT_EQ(q.get(*id)->state, JobState::Done);
}
