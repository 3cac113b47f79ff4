// The server's jobs: a bounded FIFO queue and one worker thread that runs them one at a time on the loaded
// pipeline (one generation already uses every core or the whole mesh; two at once would only share them).
// A job is queued, running, then done, failed or cancelled; while it runs it reports its step, and a preview
// every few steps, and a cancel stops it between two steps. What runs a job is a function given to the
// queue, so the queue is tested without a model.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "app/serve_request.h"
#include "core/error.h"

namespace meshdit {

enum class JobState { Queued, Running, Done, Failed, Cancelled };
const char* job_state_name(JobState s);
inline bool finished(JobState s) { return s == JobState::Done || s == JobState::Failed || s == JobState::Cancelled; }

using Png = std::vector<uint8_t>;

// A job as a reader sees it at one moment.
struct JobSnapshot {
  std::string id;
  ImageRequest request;
  JobState state = JobState::Queued;
  int64_t step = 0, steps = 0;  // denoising steps done, of steps (0 of 0 until the first step ends)
  double elapsed_s = 0;         // since it started running
  double eta_s = -1;            // to the last step, from the mean step so far; < 0 unknown
  int64_t queue_position = 0;   // jobs ahead of it while queued
  std::string error;            // failed: why; cancelled: by whom
  std::vector<Png> images;      // done: the PNGs
  Png preview;                  // the latest preview (running), may be empty
  int64_t preview_step = -1;
  uint64_t version = 0;  // increases with every change
};

// What a running job reports through.
class JobProgress {
 public:
  virtual ~JobProgress() = default;
  // Whether step `step` (from 0) of `steps` should come with a preview (every few steps, and the last).
  virtual bool wants_preview(int64_t step, int64_t steps) const = 0;
  // Records that step `step` is done (with a preview PNG, or empty); cancelled_error() when the job is to stop.
  virtual Status step(int64_t step, int64_t steps, Png preview) = 0;
};

using JobRunner = std::function<Result<std::vector<Png>>(const ImageRequest& request, JobProgress& progress)>;

struct JobQueueOptions {
  size_t capacity = 16;       // jobs waiting (the running one not counted)
  int64_t preview_every = 2;  // steps
  size_t keep_finished = 64;  // finished jobs kept for GET (the oldest are forgotten)
  // false: no thread of its own; the caller runs run_worker() (on a mesh, MPI is called from the main thread
  // only, and a job's collectives with it).
  bool own_worker = true;
};

class JobQueue {
 public:
  JobQueue(JobRunner run, JobQueueOptions options = {});
  ~JobQueue();  // shutdown(true)
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Queues a job and returns its id; an error when the queue is full or shut down.
  Result<std::string> submit(ImageRequest request);
  std::optional<JobSnapshot> get(const std::string& id) const;
  // Every job still known (queued, running and the last finished ones) in submission order, without images.
  std::vector<JobSnapshot> list() const;
  // The job once its version passes `seen` (or at `timeout`, unchanged); nullopt for an unknown id.
  std::optional<JobSnapshot> wait(const std::string& id, uint64_t seen, std::chrono::milliseconds timeout) const;
  // Cancels a queued job at once and a running one at its next step; false for an unknown or finished job.
  bool cancel(const std::string& id, const std::string& why = "cancelled by request");
  // Runs the jobs on the calling thread until shutdown (own_worker = false).
  void run_worker();
  // Takes no more jobs, cancels the queued ones and either cancels the running one or lets it finish, then
  // stops the worker (joins its own; run_worker() returns once the running job has ended). Returns what
  // became of the running job: "none", "finished" or "cancelled".
  std::string shutdown(bool cancel_running);
  size_t waiting() const;

 private:
  struct Job;
  class Progress;
  void work();
  void notify_locked(Job& job);
  JobSnapshot snapshot_locked(const Job& job) const;

  JobRunner run_;
  JobQueueOptions options_;
  mutable std::mutex mu_;
  mutable std::condition_variable work_cv_, change_cv_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::map<uint64_t, std::string> order_;  // submission number -> id
  std::deque<std::shared_ptr<Job>> pending_;
  std::deque<std::string> finished_ids_;
  std::shared_ptr<Job> running_;
  bool stopping_ = false;
  uint64_t next_ = 0;
  std::thread worker_;
};

}  // namespace meshdit
