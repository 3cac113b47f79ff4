#include "core/step_watch.h"

#include <string>
#include <utility>

namespace meshdit {
namespace {

thread_local StepWatch t_watch;
constexpr const char* kCancelled = "cancelled";

}  // namespace

Status notify_step(int64_t step, int64_t steps, const Tensor& latents) {
  if (!t_watch) return ok_status();
  return t_watch(step, steps, latents);
}

Error cancelled_error() { return make_error(kCancelled); }

bool is_cancelled(const Error& e) {
  // Callers above the loop prepend context ("generating: cancelled"), never append.
  const std::string& m = e.message;
  const size_t n = std::char_traits<char>::length(kCancelled);
  return m.size() >= n && m.compare(m.size() - n, n, kCancelled) == 0;
}

ScopedStepWatch::ScopedStepWatch(StepWatch watch) : prev_(std::exchange(t_watch, std::move(watch))) {}

ScopedStepWatch::~ScopedStepWatch() { t_watch = std::move(prev_); }

}  // namespace meshdit
