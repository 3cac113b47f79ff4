// A fixed pool of worker threads for the CPU kernels. parallel_for splits [0, n) into contiguous ranges,
// one per thread, and runs the caller's share on the calling thread, so a pool of T threads uses T cores.
#pragma once
#include <cstdint>
#include <functional>

namespace meshdit {

// Number of threads the kernels use (default: hardware concurrency, or MESHDIT_THREADS).
int num_threads();
void set_num_threads(int n);

// fn(begin, end, thread_index). Nested calls run inline on the calling thread.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t min_chunk = 1);

}  // namespace meshdit
