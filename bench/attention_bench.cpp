// ops::attention on the CPU backend against a matrix product of the same FLOP count, in one program, so
// that "attention at half the GEMM throughput" (issue 8) is measured under the same load.
//
//   BM_attention/L/H/D/bf16   B = 1, q = k = v [1, L, H, D]; GFLOPs = 4 L^2 D H / time
//   BM_gemm_same/L/H/D/bf16   ops::linear x [L, H D] . w [2 L, H D]^T: 2 L (2 L) (H D) = the same FLOPs;
//                             bf16 = 1 runs it with bf16 weights in bf16 linear precision
//
// Heads as the models run them: Flux 24 x 128, SD3 38 x 64. MESHDIT_BENCH_THREADS sets the pool size
// (default 2). GFLOPs is per wall-clock second; GFLOPs_per_cpu_s per second of process CPU time (all
// threads), the steadier figure on a shared machine: times the thread count, it is what an unloaded
// machine would give if the threads scale.
#include <benchmark/benchmark.h>

#include <cmath>
#include <ctime>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/gemm.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "core/thread_pool.h"

namespace {

using meshdit::DType;
using meshdit::Tensor;
using meshdit::Precision;
using meshdit::ScopedPrecision;
namespace ops = meshdit::ops;
namespace cpu = meshdit::cpu;

int bench_threads() {
  const char* e = std::getenv("MESHDIT_BENCH_THREADS");
  const int v = e ? std::atoi(e) : 0;
  return v > 0 ? v : 2;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void set_counters(benchmark::State& st, double flops, double cpu_s) {
  st.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOPs_per_cpu_s"] = flops * 1e-9 * double(st.iterations()) / cpu_s;
}

Tensor random_tensor(const meshdit::Shape& shape, float scale, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  std::vector<float> v(size_t(meshdit::shape_numel(shape)));
  for (auto& x : v) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    x = scale * (float((s * 0x2545F4914F6CDD1Dull) >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  return Tensor::from_f32(shape, std::move(v));
}

Precision precision_arg(benchmark::State& st) {
  return st.range(3) ? Precision::BF16 : Precision::F32;
}

void BM_attention(benchmark::State& st) {
  const int64_t L = st.range(0), H = st.range(1), D = st.range(2);
  if (st.range(3) && !cpu::bf16_gemm_available()) return st.SkipWithError("no bf16 GEMM on this CPU");
  Tensor q = random_tensor({1, L, H, D}, 1.0f, 11), k = random_tensor({1, L, H, D}, 1.0f, 12),
         v = random_tensor({1, L, H, D}, 1.0f, 13);
  const float scale = 1.0f / std::sqrt(float(D));
  const auto before = cpu::attention_precision();
  (void)cpu::set_attention_precision(precision_arg(st));
  const double c0 = process_cpu_seconds();
  for (auto _ : st) {
    Tensor o = ops::attention(q, k, v, scale);
    benchmark::DoNotOptimize(o.raw());
  }
  const double cpu_s = process_cpu_seconds() - c0;
  (void)cpu::set_attention_precision(before);
  set_counters(st, 4.0 * double(L) * double(L) * double(D) * double(H), cpu_s);
}

void BM_gemm_same(benchmark::State& st) {
  const int64_t L = st.range(0), H = st.range(1), D = st.range(2);
  const bool bf16 = st.range(3) != 0;
  if (bf16 && !cpu::bf16_gemm_available()) return st.SkipWithError("no bf16 GEMM on this CPU");
  Tensor x = random_tensor({L, H * D}, 1.0f, 21);
  Tensor w = random_tensor({2 * L, H * D}, 0.05f, 22);
  if (bf16) w = w.to(DType::BF16);
  const ScopedPrecision scoped(precision_arg(st));
  const double c0 = process_cpu_seconds();
  for (auto _ : st) {
    Tensor y = ops::linear(x, w);
    benchmark::DoNotOptimize(y.raw());
  }
  const double cpu_s = process_cpu_seconds() - c0;
  set_counters(st, 4.0 * double(L) * double(L) * double(D) * double(H), cpu_s);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "H", "D", "bf16"});
  for (int64_t bf16 : {0, 1})
    for (int64_t L : {1024, 4096, 8192}) {
      b->Args({L, 24, 128, bf16});
      b->Args({L, 38, 64, bf16});
    }
  b->MeasureProcessCPUTime()->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
}

BENCHMARK(BM_attention)->Apply(shapes);
BENCHMARK(BM_gemm_same)->Apply(shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (meshdit::num_threads() != bench_threads()) meshdit::set_num_threads(bench_threads());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
