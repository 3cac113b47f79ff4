#include "app/serve_jobs.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "core/step_watch.h"

namespace meshdit {

using Clock = std::chrono::steady_clock;

const char* job_state_name(JobState s) {
  switch (s) {
    case JobState::Queued:
      return "queued";
    case JobState::Running:
      return "running";
    case JobState::Done:
      return "done";
    case JobState::Failed:
      return "failed";
    case JobState::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

struct JobQueue::Job {
  JobSnapshot s;
  std::atomic<bool> cancel{false};
  std::string cancel_why;
  uint64_t number = 0;  // submission order
  Clock::time_point started;
};

class JobQueue::Progress : public JobProgress {
 public:
  Progress(JobQueue& q, Job& job) : q_(q), job_(job) {}
  bool wants_preview(int64_t step, int64_t steps) const override {
    return (step + 1) % std::max<int64_t>(1, q_.options_.preview_every) == 0 || step + 1 == steps;
  }
  Status step(int64_t step, int64_t steps, Png preview) override {
    std::lock_guard<std::mutex> lock(q_.mu_);
    job_.s.step = step + 1;
    job_.s.steps = steps;
    job_.s.elapsed_s = std::chrono::duration<double>(Clock::now() - job_.started).count();
    job_.s.eta_s = job_.s.elapsed_s / double(step + 1) * double(steps - step - 1);
    if (!preview.empty()) {
      job_.s.preview = std::move(preview);
      job_.s.preview_step = step + 1;
    }
    q_.notify_locked(job_);
    if (job_.cancel.load()) return cancelled_error();
    return ok_status();
  }

 private:
  JobQueue& q_;
  Job& job_;
};

JobQueue::JobQueue(JobRunner run, JobQueueOptions options) : run_(std::move(run)), options_(options) {
  if (options_.own_worker) worker_ = std::thread([this] { work(); });
}

void JobQueue::run_worker() { work(); }

JobQueue::~JobQueue() { shutdown(true); }

void JobQueue::notify_locked(Job& job) {
  ++job.s.version;
  change_cv_.notify_all();
}

JobSnapshot JobQueue::snapshot_locked(const Job& job) const {
  JobSnapshot s = job.s;
  if (s.state == JobState::Queued) {
    for (size_t i = 0; i < pending_.size(); ++i)
      if (pending_[i].get() == &job) s.queue_position = int64_t(i) + (running_ ? 1 : 0);
  } else if (s.state == JobState::Running) {
    s.elapsed_s = std::chrono::duration<double>(Clock::now() - job.started).count();
  }
  return s;
}

Result<std::string> JobQueue::submit(ImageRequest request) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return make_error("queue: the server is shutting down");
  if (pending_.size() >= options_.capacity)
    return make_error("queue: full (" + std::to_string(pending_.size()) + " jobs waiting); retry later");
  auto job = std::make_shared<Job>();
  // Unguessable ids: one client cannot read or cancel another's job by counting.
  char id[40];
  std::snprintf(id, sizeof id, "job-%llu-%08llx", (unsigned long long)++next_,
                (unsigned long long)(rng() & 0xffffffffull));
  job->s.id = id;
  job->number = next_;
  order_[next_] = job->s.id;
  job->s.request = std::move(request);
  job->s.steps = job->s.request.options.steps;
  jobs_[job->s.id] = job;
  pending_.push_back(job);
  work_cv_.notify_one();
  change_cv_.notify_all();
  return job->s.id;
}

std::optional<JobSnapshot> JobQueue::get(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return snapshot_locked(*it->second);
}

std::vector<JobSnapshot> JobQueue::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<JobSnapshot> out;
  for (const auto& [number, id] : order_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    out.push_back(snapshot_locked(*it->second));
    out.back().images.clear();
    out.back().preview.clear();
  }
  return out;
}

std::optional<JobSnapshot> JobQueue::wait(const std::string& id, uint64_t seen,
                                          std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  std::shared_ptr<Job> job = it->second;  // kept alive even if forgotten meanwhile
  change_cv_.wait_for(lock, timeout, [&] { return job->s.version > seen; });
  return snapshot_locked(*job);
}

bool JobQueue::cancel(const std::string& id, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || finished(it->second->s.state)) return false;
  Job& job = *it->second;
  job.cancel_why = why;
  job.cancel = true;
  if (job.s.state == JobState::Queued) {
    for (auto p = pending_.begin(); p != pending_.end(); ++p)
      if (p->get() == &job) {
        pending_.erase(p);
        break;
      }
    job.s.state = JobState::Cancelled;
    job.s.error = why;
    finished_ids_.push_back(id);
    notify_locked(job);
  }
  return true;
}

std::string JobQueue::shutdown(bool cancel_running) {
  std::string fate = "none";
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return fate;
    stopping_ = true;
    for (auto& job : pending_) {
      job->s.state = JobState::Cancelled;
      job->s.error = "cancelled: the server is shutting down";
      notify_locked(*job);
    }
    pending_.clear();
    if (running_) {
      fate = cancel_running ? "cancelled" : "finished";
      if (cancel_running) {
        running_->cancel_why = "cancelled: the server is shutting down";
        running_->cancel = true;
      }
    }
    work_cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  return fate;
}

size_t JobQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

void JobQueue::work() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping
      job = pending_.front();
      pending_.pop_front();
      running_ = job;
      job->s.state = JobState::Running;
      job->started = Clock::now();
      notify_locked(*job);
      change_cv_.notify_all();  // the others' queue positions moved
    }
    Progress progress(*this, *job);
    Result<std::vector<Png>> out = [&]() -> Result<std::vector<Png>> {
      // A runner that throws (std::bad_alloc at a size the estimate let through) fails its job, not the server.
      try {
        return run_(job->s.request, progress);
      } catch (const std::exception& e) {
        return make_error(std::string("internal error: ") + e.what());
      }
    }();
    std::lock_guard<std::mutex> lock(mu_);
    running_.reset();
    if (out.ok()) {
      job->s.state = JobState::Done;
      job->s.images = std::move(*out);
      job->s.step = job->s.steps;
      job->s.eta_s = 0;
    } else if (job->cancel && is_cancelled(out.error())) {
      job->s.state = JobState::Cancelled;
      job->s.error = job->cancel_why;
    } else {
      job->s.state = JobState::Failed;
      job->s.error = out.error().message;
    }
    job->s.elapsed_s = std::chrono::duration<double>(Clock::now() - job->started).count();
    job->s.preview.clear();
    finished_ids_.push_back(job->s.id);
    while (finished_ids_.size() > options_.keep_finished) {
      if (auto it = jobs_.find(finished_ids_.front()); it != jobs_.end()) {
        order_.erase(it->second->number);
        jobs_.erase(it);
      }
      finished_ids_.pop_front();
    }
    notify_locked(*job);
  }
}

}  // namespace meshdit
