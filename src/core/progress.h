// Progress of long stages that are not denoising steps (a video's VAE decode, frame chunk by frame chunk):
// the code doing the work reports how far it is, and whoever runs it (the CLI's progress bar) may listen.
// One process-wide listener; reporting without one costs a relaxed atomic load.
#pragma once
#include <cstdint>
#include <functional>

namespace meshdit {

// (stage, units done, units in all): "vae decode", 3, 21. A stage reports 0 as it starts, then after each unit.
using ProgressListener = std::function<void(const char* stage, int64_t done, int64_t total)>;

void report_progress(const char* stage, int64_t done, int64_t total);

// Installs `listener` for its lifetime (and restores the previous one).
class ScopedProgressListener {
 public:
  explicit ScopedProgressListener(ProgressListener listener);
  ~ScopedProgressListener();
  ScopedProgressListener(const ScopedProgressListener&) = delete;
  ScopedProgressListener& operator=(const ScopedProgressListener&) = delete;

 private:
  ProgressListener prev_;
};

}  // namespace meshdit
