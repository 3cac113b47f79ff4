#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace meshdit {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Sleeps while *a == expected (the kernel checks atomically). The futex directly: std::atomic::wait in
// libstdc++ 12 spins and keeps a waiter table of its own, which this pool's own spin makes redundant.
static_assert(sizeof(std::atomic<uint32_t>) == 4 && sizeof(std::atomic<int>) == 4);
template <class T>
void futex_wait(std::atomic<T>& a, T expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAIT_PRIVATE, uint32_t(expected), nullptr, nullptr, 0);
}
template <class T>
void futex_wake(std::atomic<T>& a, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// How long an idle worker (and a caller waiting for its parts) polls before sleeping in the kernel. The
// model's kernels come back to back with a few microseconds of serial work between them; 50 us covers
// those gaps without burning much CPU when the pool is really idle. MESHDIT_SPIN_US overrides it (0: sleep
// at once, which suits oversubscribed cores).
int default_spin_us() {
  if (const char* e = std::getenv("MESHDIT_SPIN_US")) {
    const int v = std::atoi(e);
    if (v >= 0) return v;
  }
  return 50;
}

// Calls done() until it returns true, polling for up to spin_us, then sleeping through block().
template <class Done, class Block>
void spin_then_block(int spin_us, const Done& done, const Block& block) {
  if (done()) return;
  if (spin_us > 0) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (done()) return;
        cpu_relax();
      }
      if (std::chrono::steady_clock::now() >= until) break;
    }
  }
  block();
}

// The job being run is described by one atomic word, generation | parts | next unclaimed part, so that a
// worker claims a part and checks that the job is still the one it read with one compare-and-swap. A late
// worker can then never run a part of a finished job, and it reads fn_/n_ only after a successful claim,
// when the caller is still waiting for that part (no race with the caller writing the next job).
constexpr int kPartBits = 16;
constexpr uint64_t kPartMask = (uint64_t(1) << kPartBits) - 1;
constexpr int kMaxThreads = int(kPartMask);

class Pool {
 public:
  explicit Pool(int n) : spin_us_(default_spin_us()) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return size_; }

  void resize(int n) {
    stop();
    size_ = std::clamp(n, 1, kMaxThreads);
    stopping_.store(false, std::memory_order_relaxed);
    // A new worker waits for the wake-up after this one, not after whatever it reads when it gets to run:
    // a stop() in between would otherwise go unseen and leave it asleep at join.
    const uint32_t seen = wake_.load(std::memory_order_relaxed);
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this, seen] { loop(seen); });
  }

  void run(int64_t n, RangeFn fn, int64_t min_chunk) {
    const int64_t t = std::min<int64_t>(size_, std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
    // busy_ also catches nested calls: the thread running a task finds it set.
    if (t <= 1 || busy_.exchange(true, std::memory_order_acquire)) {
      fn(0, n, 0);
      return;
    }
    fn_ = &fn;
    n_ = n;
    error_ = nullptr;
    remaining_.store(int(t), std::memory_order_relaxed);
    gen_ = (gen_ + 1) & 0xffffffffu;
    job_.store((gen_ << (2 * kPartBits)) | (uint64_t(t) << kPartBits), std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake(wake_, INT32_MAX);

    run_parts();
    spin_then_block(
        spin_us_, [this] { return remaining_.load(std::memory_order_acquire) == 0; },
        [this] {
          caller_waiting_.store(true, std::memory_order_seq_cst);
          for (int r; (r = remaining_.load(std::memory_order_seq_cst)) != 0;) futex_wait(remaining_, r);
          caller_waiting_.store(false, std::memory_order_relaxed);
        });
    std::exception_ptr err = std::move(error_);
    fn_ = nullptr;
    busy_.store(false, std::memory_order_release);
    if (err) std::rethrow_exception(err);
  }

 private:
  // Claims and runs parts of the current job until none is left.
  void run_parts() {
    uint64_t w = job_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t parts = (w >> kPartBits) & kPartMask, next = w & kPartMask;
      if (next >= parts) return;
      if (!job_.compare_exchange_weak(w, w + 1, std::memory_order_acquire, std::memory_order_acquire)) continue;
      const int64_t n = n_;
      try {
        (*fn_)(n * int64_t(next) / int64_t(parts), n * int64_t(next + 1) / int64_t(parts), int(next));
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (remaining_.fetch_sub(1, std::memory_order_seq_cst) == 1 && caller_waiting_.load(std::memory_order_seq_cst))
        futex_wake(remaining_, 1);
      w = job_.load(std::memory_order_acquire);
    }
  }

  void loop(uint32_t seen) {
    for (;;) {
      spin_then_block(
          spin_us_, [&] { return wake_.load(std::memory_order_acquire) != seen; },
          [&] {
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while (wake_.load(std::memory_order_seq_cst) == seen) futex_wait(wake_, seen);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
          });
      seen = wake_.load(std::memory_order_acquire);
      if (stopping_.load(std::memory_order_acquire)) return;
      run_parts();
    }
  }

  void stop() {
    stopping_.store(true, std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(wake_, INT32_MAX);
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  const int spin_us_;
  int size_ = 1;
  std::vector<std::thread> workers_;

  // Written by the caller before job_ is published, read by workers after claiming a part.
  RangeFn* fn_ = nullptr;
  int64_t n_ = 0;
  std::exception_ptr error_;  // guarded by error_mu_ while parts run
  std::mutex error_mu_;
  uint64_t gen_ = 0;  // caller only (under busy_)

  std::atomic<bool> busy_{false};
  alignas(64) std::atomic<uint64_t> job_{0};
  alignas(64) std::atomic<int> remaining_{0};
  std::atomic<bool> caller_waiting_{false};
  alignas(64) std::atomic<uint32_t> wake_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
};

int default_threads() {
  if (const char* e = std::getenv("MESHDIT_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(std::max(1, n)); }

void parallel_for(int64_t n, RangeFn fn, int64_t min_chunk) {
  if (n <= 0) return;
  pool().run(n, fn, min_chunk);
}

}  // namespace meshdit
