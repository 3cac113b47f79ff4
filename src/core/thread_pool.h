// A fixed pool of worker threads for the CPU kernels.
//
// parallel_for(n, fn, min_chunk) splits [0, n) into at most num_threads() contiguous parts of at least
// min_chunk indices and runs fn(begin, end, part) once per part. The calling thread takes parts too, so a
// pool of T threads uses T cores, and parts are claimed first come first served: a worker that is slow to
// wake (its core busy with another process) leaves its part to the caller instead of holding it up.
//
// Rules the kernels rely on:
//  - Every index is covered exactly once; part numbers are in [0, num_threads()) and distinct within a
//    call, so per-part buffers indexed by `part` need no locking. Which thread runs a part is not fixed,
//    but the part -> range mapping depends only on (n, min_chunk, num_threads()).
//  - One call at a time uses the workers. A call made while another is running (from inside a task, or
//    from a second thread) runs all of [0, n) inline on its own thread, as part 0.
//  - An exception thrown by fn is rethrown on the calling thread after every part has finished (the
//    first one thrown, if several); the other parts still run.
//  - Workers spin briefly after a call before sleeping, because kernels come back to back: waking a
//    sleeping thread costs tens of microseconds, more than many of the model's small operations take.
//
// Grain: pass min_chunk so that one part is worth a wake-up (several microseconds of work); grain_for()
// turns a per-index cost into such a chunk.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

namespace meshdit {

// Number of threads the kernels use (default: hardware concurrency, or MESHDIT_THREADS).
int num_threads();
// Joins and restarts the workers; must not be called while a parallel_for is running.
void set_num_threads(int n);

// A non-owning reference to a callable: parallel_for takes one instead of a std::function so that no call
// allocates (a lambda capturing several references does not fit std::function's small buffer).
template <class Sig>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>>>
  FunctionRef(F&& f) noexcept  // NOLINT: implicit, like std::function, so lambdas pass straight in
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, Args... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...); }) {}
  R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

using RangeFn = FunctionRef<void(int64_t begin, int64_t end, int part)>;

void parallel_for(int64_t n, RangeFn fn, int64_t min_chunk = 1);

// Indices per part so that a part holds about kMinPartNs of work, given the cost of one index in
// nanoseconds (a rough figure: an f32 elementwise op is ~0.25 ns per element, a row of K dot products
// ~0.1 ns per multiply-add). Below 2 parts' worth the whole range runs on the caller.
inline constexpr double kMinPartNs = 20000;  // ~20 us: a few wake-up latencies
constexpr int64_t grain_for(double ns_per_index) {
  const double g = kMinPartNs / (ns_per_index > 0 ? ns_per_index : 1e-3);
  return g < 1 ? 1 : g > 1e15 ? int64_t(1e15) : int64_t(g);
}

}  // namespace meshdit
