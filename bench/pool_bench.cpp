// The thread pool's cost per parallel_for call (src/core/thread_pool.h), apart from any kernel.
//
//   BM_dispatch_empty      one call whose parts do nothing: the round trip of handing parts to the
//                          workers and waiting for them (wake-up, hand-off, completion).
//   BM_add/<n>/<split>     y = a + b over n floats, the elementwise work of the built-in model (64..320
//                          tokens x 128 hidden) up to a Flux-sized activation. split 0: on the caller
//                          alone; 1: forced across the pool (min_chunk 1); 2: with grain_for()'s grain,
//                          as the kernels call it.
//   BM_gap/<us>            a 4096-float add, then <us> microseconds of serial work on the caller, as
//                          between two kernels: shows whether the workers are still awake for the next call.
//
// Besides Google Benchmark's wall and caller CPU times, proc_cpu_us is the CPU time of the whole process
// (every pool thread) per iteration: spinning shows up there.
//
// MESHDIT_BENCH_THREADS sets the pool size (default 2). Depends on core/thread_pool.h alone, so that it
// also builds against an older pool for before/after figures.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "core/thread_pool.h"

namespace {

double process_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void set_threads() {
  const char* e = std::getenv("MESHDIT_BENCH_THREADS");
  meshdit::set_num_threads(e ? std::atoi(e) : 2);
}

// An f32 add streams 12 bytes per element; ~0.25 ns each on one core with the data in cache.
constexpr double kAddNs = 0.25;

struct ProcCpu {
  benchmark::State& state;
  double t0 = process_cpu_s();
  ~ProcCpu() {
    state.counters["proc_cpu_us"] =
        benchmark::Counter(1e6 * (process_cpu_s() - t0) / double(state.iterations()));
  }
};

void BM_dispatch_empty(benchmark::State& state) {
  set_threads();
  const int64_t n = meshdit::num_threads();
  ProcCpu cpu{state};
  for (auto _ : state) {
    meshdit::parallel_for(n, [](int64_t, int64_t, int) { benchmark::ClobberMemory(); }, 1);
  }
  state.counters["threads"] = double(n);
}
BENCHMARK(BM_dispatch_empty)->UseRealTime();

void BM_add(benchmark::State& state) {
  set_threads();
  const int64_t n = state.range(0);
  const int split = int(state.range(1));
  std::vector<float> a(static_cast<size_t>(n), 1.0f), b(static_cast<size_t>(n), 2.0f), y(static_cast<size_t>(n));
  auto body = [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) y[size_t(i)] = a[size_t(i)] + b[size_t(i)];
  };
  const int64_t chunk = split == 0 ? n : split == 1 ? 1 : meshdit::grain_for(kAddNs);
  ProcCpu cpu{state};
  for (auto _ : state) {
    meshdit::parallel_for(n, body, chunk);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_add)
    ->ArgsProduct({{64 * 128, 320 * 128, 320 * 512, 4096 * 3072}, {0, 1, 2}})
    ->UseRealTime();

void BM_gap(benchmark::State& state) {
  set_threads();
  const int64_t n = 4096;
  const auto gap = std::chrono::microseconds(state.range(0));
  std::vector<float> a(static_cast<size_t>(n), 1.0f), b(static_cast<size_t>(n), 2.0f), y(static_cast<size_t>(n));
  ProcCpu cpu{state};
  for (auto _ : state) {
    meshdit::parallel_for(
        n, [&](int64_t i0, int64_t i1, int) {
          for (int64_t i = i0; i < i1; ++i) y[size_t(i)] = a[size_t(i)] + b[size_t(i)];
        }, 1);
    const auto until = std::chrono::steady_clock::now() + gap;
    while (std::chrono::steady_clock::now() < until) {
    }
  }
}
BENCHMARK(BM_gap)->Arg(0)->Arg(20)->Arg(200)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
