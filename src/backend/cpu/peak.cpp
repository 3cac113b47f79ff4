#include "backend/cpu/peak.h"

#include <immintrin.h>

#include <chrono>
#include <thread>

#include "backend/cpu/cpu_info.h"

namespace meshdit::cpu {
namespace {

// Each kernel runs `iters` rounds of 16 independent multiply-adds (enough to cover the latency of two pipes) on
// accumulators that start different, so the compiler can neither merge nor drop them, and returns a value
// that depends on all of them. Flops per round: 16 x lanes x 2 (x 2 for bf16's pair products).
constexpr int kAcc = 16;

template <class V, class Step, class Sum>
float run_rounds(long iters, V a, V b, V (*init)(int), Step step, Sum sum) {
  V c[kAcc];
  for (int i = 0; i < kAcc; ++i) c[i] = init(i);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) c[i] = step(c[i], a, b);
  }
  float s = 0;
  for (int i = 0; i < kAcc; ++i) s += sum(c[i]);
  return s;
}

__attribute__((target("avx2,fma"))) float fma_avx2(long iters) {
  return run_rounds<__m256>(
      iters, _mm256_set1_ps(1.0f), _mm256_set1_ps(1e-9f), [](int i) { return _mm256_set1_ps(float(i)); },
      [](__m256 c, __m256 a, __m256 b) __attribute__((target("avx2,fma"))) { return _mm256_fmadd_ps(a, b, c); },
      [](__m256 c) __attribute__((target("avx2,fma"))) {
        alignas(32) float v[8];
        _mm256_store_ps(v, c);
        return v[0] + v[7];
      });
}

__attribute__((target("avx512f"))) float fma_avx512(long iters) {
  return run_rounds<__m512>(
      iters, _mm512_set1_ps(1.0f), _mm512_set1_ps(1e-9f), [](int i) { return _mm512_set1_ps(float(i)); },
      [](__m512 c, __m512 a, __m512 b) __attribute__((target("avx512f"))) { return _mm512_fmadd_ps(a, b, c); },
      [](__m512 c) __attribute__((target("avx512f"))) {
        alignas(64) float v[16];
        _mm512_store_ps(v, c);
        return v[0] + v[15];
      });
}

__attribute__((target("avx512f,avx512bf16"))) float dot_bf16(long iters) {
  return run_rounds<__m512>(
      iters, _mm512_castsi512_ps(_mm512_set1_epi32(0x3f803f80)), _mm512_castsi512_ps(_mm512_set1_epi32(0x30003000)),
      [](int i) { return _mm512_set1_ps(float(i)); },
      [](__m512 c, __m512 a, __m512 b)
          __attribute__((target("avx512f,avx512bf16"))) { return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b); },
      [](__m512 c) __attribute__((target("avx512f"))) {
        alignas(64) float v[16];
        _mm512_store_ps(v, c);
        return v[0] + v[15];
      });
}

struct Kind {
  const char* what;
  float (*fn)(long);
  double flops_per_round;
};

// GFLOP/s of `threads` threads each running fn at once, and of one alone.
PeakRate measure(const Kind& k, int threads, double seconds) {
  using clock = std::chrono::steady_clock;
  // Calibrate the rounds for `seconds` on one thread (a short run first also wakes the core's wide units up).
  long iters = 1 << 16;
  for (;;) {
    const auto t0 = clock::now();
    volatile float sink = k.fn(iters);
    (void)sink;
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    if (s > seconds / 8 || iters > (1L << 40)) {
      iters = long(double(iters) * seconds / std::max(s, 1e-6));
      break;
    }
    iters *= 4;
  }
  auto rate = [&](int n) {
    std::vector<double> secs(static_cast<size_t>(n), 0.0);
    std::vector<std::thread> pool;
    for (int t = 0; t < n; ++t)
      pool.emplace_back([&, t] {
        const auto t0 = clock::now();
        volatile float sink = k.fn(iters);
        (void)sink;
        secs[size_t(t)] = std::chrono::duration<double>(clock::now() - t0).count();
      });
    for (auto& th : pool) th.join();
    double total = 0;
    for (double s : secs) total += k.flops_per_round * double(iters) / s / 1e9;
    return total;
  };
  PeakRate r;
  r.what = k.what;
  r.one_thread = rate(1);
  r.all_threads = threads > 1 ? rate(threads) : r.one_thread;
  return r;
}

}  // namespace

std::vector<PeakRate> measure_peaks(int threads, double seconds) {
  const CpuInfo& cpu = cpu_info();
  std::vector<Kind> kinds;
  if (cpu.avx2 && cpu.fma) kinds.push_back({"f32 FMA, AVX2 (256-bit)", fma_avx2, kAcc * 8 * 2.0});
  if (cpu.avx512f) kinds.push_back({"f32 FMA, AVX-512", fma_avx512, kAcc * 16 * 2.0});
  if (cpu.avx512f && cpu.avx512_bf16) kinds.push_back({"bf16 dot products, AVX512_BF16", dot_bf16, kAcc * 16 * 4.0});
  std::vector<PeakRate> out;
  for (const Kind& k : kinds) out.push_back(measure(k, threads, seconds));
  return out;
}

}  // namespace meshdit::cpu
