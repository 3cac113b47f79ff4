// The arithmetic peak of this machine's cores, measured rather than taken from a data sheet: a VM's clock, turbo
// with every core busy, and how many FMA pipes a core really has (Zen 4 splits 512-bit operations in two; Zen 5
// does not) all decide it. What `meshdit bench peak` prints and what the benchmarks' GFLOP/s are compared with.
#pragma once
#include <string>
#include <vector>

namespace meshdit::cpu {

struct PeakRate {
  std::string what;        // "f32 FMA, AVX2 (256-bit)", "f32 FMA, AVX-512", "bf16 dot products, AVX512_BF16"
  double one_thread = 0;   // GFLOP/s on one thread alone
  double all_threads = 0;  // GFLOP/s summed over `threads` threads running at once
};

// One entry per instruction kind this CPU runs (AVX2 FMA needs avx2+fma; the others avx512f / avx512_bf16),
// each from dependent-free multiply-adds on register operands only (no memory traffic), about `seconds` per run.
std::vector<PeakRate> measure_peaks(int threads, double seconds = 0.3);

}  // namespace meshdit::cpu
