#include "core/progress.h"

#include <atomic>
#include <mutex>

namespace meshdit {

namespace {

std::mutex g_mutex;
ProgressListener g_listener;
std::atomic<bool> g_on{false};

}  // namespace

void report_progress(const char* stage, int64_t done, int64_t total) {
  if (!g_on.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_listener) g_listener(stage, done, total);
}

ScopedProgressListener::ScopedProgressListener(ProgressListener listener) {
  std::lock_guard<std::mutex> lock(g_mutex);
  prev_ = std::move(g_listener);
  g_listener = std::move(listener);
  g_on.store(bool(g_listener), std::memory_order_relaxed);
}

ScopedProgressListener::~ScopedProgressListener() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_listener = std::move(prev_);
  g_on.store(bool(g_listener), std::memory_order_relaxed);
}

}  // namespace meshdit
