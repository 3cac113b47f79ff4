// A watcher of the denoising loop on this thread: after every step the loop hands it (step, steps, latents),
// so whoever runs a generation (a server's job) can show progress, make a preview from the latents and stop
// the generation between two steps by returning an error, which the loop returns as its own. The watcher is
// thread-local: a server's worker thread watches its own generation and no other. Without one the call
// costs a thread-local load.
#pragma once
#include <cstdint>
#include <functional>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

// (step index from 0, number of steps, the latents after that step, as the pipeline packs them).
using StepWatch = std::function<Status(int64_t step, int64_t steps, const Tensor& latents)>;

// Called by the denoising loop after each step: the watcher's verdict, ok without one.
Status notify_step(int64_t step, int64_t steps, const Tensor& latents);

// The error a watcher returns to stop a generation; is_cancelled recognises it after context was added.
Error cancelled_error();
bool is_cancelled(const Error& e);

// Installs `watch` on this thread for its lifetime (and restores the previous one).
class ScopedStepWatch {
 public:
  explicit ScopedStepWatch(StepWatch watch);
  ~ScopedStepWatch();
  ScopedStepWatch(const ScopedStepWatch&) = delete;
  ScopedStepWatch& operator=(const ScopedStepWatch&) = delete;

 private:
  StepWatch prev_;
};

}  // namespace meshdit
