// GEMM throughput on the shapes of one SD3.5-Large joint block (hidden 2432, 1024 image + 333 text
// tokens, so M in {1024, 333, 1357}), y[M, N] = x[M, K] . w[N, K]^T with f32 activations and weights
// [out, in] row-major as checkpoints store them:
//
//   BM_openblas         OpenBLAS cblas_sgemm on its own pthreads, f32 weights
//   BM_onednn/plain     oneDNN matmul primitive on its OpenMP threads, f32 weights used as stored
//   BM_onednn/packed    the same with the weights reordered once to oneDNN's preferred layout
//   BM_onednn_sgemm     oneDNN's BLAS-like dnnl_sgemm
//   BM_linear/kernel_*  our CPU backend's linear kernel (our pool, single-threaded oneDNN matmul per
//                       tile through backend/cpu/gemm.h), f32 or bf16 weights (widened per tile), into a
//                       preallocated output like the libraries above
//   BM_linear/kernel_bf16_precision  the same in bf16 precision: bf16 weights as stored, x rounded to
//                       bf16, f32 accumulation (skipped where the CPU has no bf16 GEMM)
//   BM_linear/ops_bf16  ops::linear with bf16 weights: the kernel plus the output allocation
//
// Every library is told to use MESHDIT_BENCH_THREADS threads (default 2). GFLOPs is 2 M N K / wall time;
// the CPU column is the process CPU time (all threads), useful when the machine is shared.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/gemm.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/quant_dot.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "core/thread_pool.h"

namespace {

using meshdit::DType;
using meshdit::Tensor;

int bench_threads() {
  static const int n = [] {
    const char* e = std::getenv("MESHDIT_BENCH_THREADS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 ? v : 2;
  }();
  return n;
}

std::vector<float> random_vec(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Weights and activations are made once per shape and shared by every library, so all see the same data.
const Tensor& weight(int64_t n, int64_t k, DType dt) {
  static std::map<std::tuple<int64_t, int64_t, DType>, Tensor> cache;
  auto key = std::make_tuple(n, k, dt);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Tensor w = Tensor::from_f32({n, k}, random_vec(size_t(n * k), 1.0f / std::sqrt(float(k)), uint32_t(n * 31 + k)));
  if (dt != DType::F32) w = w.to(dt);
  return cache.emplace(key, w).first->second;
}

const Tensor& input(int64_t m, int64_t k) {
  static std::map<std::pair<int64_t, int64_t>, Tensor> cache;
  auto key = std::make_pair(m, k);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  return cache.emplace(key, Tensor::from_f32({m, k}, random_vec(size_t(m * k), 1.0f, uint32_t(m * 17 + k))))
      .first->second;
}

void set_flops(benchmark::State& st, int64_t m, int64_t n, int64_t k) {
  // GFLOP per iteration as a rate: the column reads GFLOP/s.
  st.counters["GFLOPs"] =
      benchmark::Counter(2.0 * double(m) * double(n) * double(k) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// OpenBLAS with its own thread pool: one cblas_sgemm call over the whole problem.
void BM_openblas(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  openblas_set_num_threads(bench_threads());
  const Tensor& x = input(M, K);
  const Tensor& w = weight(N, K, DType::F32);
  Tensor y = Tensor::empty({M, N});
  for (auto _ : st) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, x.f32(), int(K), w.f32(), int(K),
                0.0f, y.f32(), int(N));
    benchmark::ClobberMemory();
  }
  st.SetLabel(openblas_get_corename());
  set_flops(st, M, N, K);
}

// oneDNN matmul primitive with OpenMP threads. packed = false: the weight is used as it is stored
// ([N, K] row-major, i.e. a K x N matrix in "ba" layout); packed = true: the weight layout is left to
// oneDNN (format_tag::any) and reordered once outside the timed loop, as a loader could do at load time.
void BM_onednn(benchmark::State& st, bool packed) {
  using namespace dnnl;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  omp_set_num_threads(bench_threads());
  const Tensor& x = input(M, K);
  const Tensor& w = weight(N, K, DType::F32);
  Tensor y = Tensor::empty({M, N});

  static engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  memory::desc a_md({M, K}, dt::f32, tag::ab);
  memory::desc w_plain({K, N}, dt::f32, tag::ba);
  memory::desc w_md = packed ? memory::desc({K, N}, dt::f32, tag::any) : w_plain;
  memory::desc c_md({M, N}, dt::f32, tag::ab);
  matmul::primitive_desc pd(matmul::desc(a_md, w_md, c_md), eng);
  matmul prim(pd);
  memory a_mem(a_md, eng, x.f32());
  memory c_mem(c_md, eng, y.f32());
  memory w_src(w_plain, eng, const_cast<float*>(w.data<float>()));
  memory w_mem = w_src;
  if (packed && pd.weights_desc() != w_plain) {
    w_mem = memory(pd.weights_desc(), eng);
    reorder(w_src, w_mem).execute(strm, w_src, w_mem);
    strm.wait();
  }
  for (auto _ : st) {
    prim.execute(strm, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, c_mem}});
    strm.wait();
    benchmark::ClobberMemory();
  }
  st.SetLabel(pd.impl_info_str());
  set_flops(st, M, N, K);
}

// The same with bf16 operands (x rounded once outside the loop, bf16 weights as stored) and f32 output: the
// library's best case for the bf16 path, with and without the weights packed ahead of time.
void BM_onednn_bf16(benchmark::State& st, bool packed) {
  using namespace dnnl;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  omp_set_num_threads(bench_threads());
  const Tensor xb = input(M, K).to(DType::BF16);
  const Tensor& w = weight(N, K, DType::BF16);
  Tensor y = Tensor::empty({M, N});

  static engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  memory::desc a_md({M, K}, dt::bf16, tag::ab);
  memory::desc w_plain({K, N}, dt::bf16, tag::ba);
  memory::desc w_md = packed ? memory::desc({K, N}, dt::bf16, tag::any) : w_plain;
  memory::desc c_md({M, N}, dt::f32, tag::ab);
  matmul::primitive_desc pd(matmul::desc(a_md, w_md, c_md), eng);
  matmul prim(pd);
  memory a_mem(a_md, eng, const_cast<void*>(xb.raw()));
  memory c_mem(c_md, eng, y.f32());
  memory w_src(w_plain, eng, const_cast<void*>(w.raw()));
  memory w_mem = w_src;
  if (packed && pd.weights_desc() != w_plain) {
    w_mem = memory(pd.weights_desc(), eng);
    reorder(w_src, w_mem).execute(strm, w_src, w_mem);
    strm.wait();
  }
  for (auto _ : st) {
    prim.execute(strm, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, c_mem}});
    strm.wait();
    benchmark::ClobberMemory();
  }
  st.SetLabel(pd.impl_info_str());
  set_flops(st, M, N, K);
}

// oneDNN's BLAS-like sgemm entry (row-major): y = x . w^T.
void BM_onednn_sgemm(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  omp_set_num_threads(bench_threads());
  const Tensor& x = input(M, K);
  const Tensor& w = weight(N, K, DType::F32);
  Tensor y = Tensor::empty({M, N});
  for (auto _ : st) {
    dnnl_sgemm('N', 'T', M, N, K, 1.0f, x.f32(), K, w.f32(), K, 0.0f, y.f32(), N);
    benchmark::ClobberMemory();
  }
  set_flops(st, M, N, K);
}

// Our path: the CPU backend's linear kernel, the pool splits the problem into tiles, each task calls
// single-threaded oneDNN (bf16 weights widened per tile by the thread that uses it, or used as stored in
// bf16 precision). `kernel` writes into a preallocated y like the library benchmarks above; `ops` goes
// through ops::linear, which also allocates the output on every call (on a VM where first-touch page
// faults are slow this shows).
void BM_linear(benchmark::State& st, DType wdt, bool via_ops, meshdit::Precision prec) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const meshdit::ScopedPrecision scoped(prec);
  const Tensor& x = input(M, K);
  const Tensor& w = weight(N, K, wdt);
  Tensor y = meshdit::ops::linear(x, w);
  const meshdit::Backend& be = meshdit::cpu_backend();
  for (auto _ : st) {
    if (via_ops)
      y = meshdit::ops::linear(x, w);
    else
      be.linear(x, w, nullptr, meshdit::Act::None, y);
    benchmark::DoNotOptimize(y.raw());
    benchmark::ClobberMemory();
  }
  const auto& k = meshdit::cpu::gemm_kernel_info();
  st.SetLabel(prec == meshdit::Precision::BF16 ? (meshdit::native_bf16() ? k.bf16_impl : "bf16 emulated") : k.f32_impl);
  set_flops(st, M, N, K);
}

// A GGUF weight kept quantized (issue 16): the backend's linear_quantized on the blocks of `type`, bf16 precision
// (tiles decoded to bf16 for the GEMM; 1-7 rows of x: integer dots). Compare with kernel_bf16_precision.
void BM_linear_quantized(benchmark::State& st, meshdit::QuantType type) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const meshdit::ScopedPrecision scoped(meshdit::Precision::BF16);
  const Tensor& x = input(M, K);
  const std::vector<float> w = weight(N, K, DType::F32).to_vector();
  const size_t rb = meshdit::quant_row_bytes(type, K);
  Tensor rows = Tensor::empty({N, int64_t(rb)}, DType::U8);
  for (int64_t n = 0; n < N; ++n) meshdit::quantize_row(type, w.data() + n * K, rows.data<uint8_t>() + n * rb, K);
  Tensor y = Tensor::empty({M, N});
  const meshdit::Backend& be = meshdit::cpu_backend();
  for (auto _ : st) {
    be.linear_quantized(x, rows, type, nullptr, meshdit::Act::None, y);
    benchmark::DoNotOptimize(y.raw());
    benchmark::ClobberMemory();
  }
  st.SetLabel(std::string(meshdit::quant_type_name(type)) + ", few-row dots " +
              meshdit::cpu::quant_dot_isa_name(meshdit::cpu::quant_dot_isa()));
  set_flops(st, M, N, K);
}

void quant_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K"});
  // Flux's products: a 512-token attention projection, the MLP's two, and a one-row modulation.
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{512, 3072, 3072},
                         {512, 12288, 3072},
                         {512, 3072, 12288},
                         {1, 18432, 3072}})
    b->Args({m, n, k});
  b->MeasureProcessCPUTime()->UseRealTime()->Unit(benchmark::kMillisecond)->MinWarmUpTime(0.3)->MinTime(1.0);
}

// One SD3.5-Large joint block's products, (N, K) in {q/k/v/out, ff up, ff down}, for the given token counts.
void sd35_products(benchmark::internal::Benchmark* b, std::initializer_list<int64_t> rows) {
  b->ArgNames({"M", "N", "K"});
  for (int64_t m : rows)
    for (auto [n, k] : {std::pair<int64_t, int64_t>{2432, 2432}, {9728, 2432}, {2432, 9728}}) b->Args({m, n, k});
  b->MeasureProcessCPUTime()->UseRealTime()->Unit(benchmark::kMillisecond)->MinWarmUpTime(0.3)->MinTime(1.0);
}

// 1024x1024: 1024 image and 333 text tokens, and the two joined.
void shapes(benchmark::internal::Benchmark* b) { sd35_products(b, {1024, 333, 1357}); }

// 256x256: 256 image and 154 text tokens, each stream with its own weights (the products with few rows where a
// step's GEMMs run slowest).
void sd35_256_shapes(benchmark::internal::Benchmark* b) { sd35_products(b, {256, 154}); }

BENCHMARK(BM_openblas)->Apply(shapes);
BENCHMARK_CAPTURE(BM_onednn, plain, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_onednn, packed, true)->Apply(shapes);
BENCHMARK(BM_onednn_sgemm)->Apply(shapes);
BENCHMARK_CAPTURE(BM_onednn_bf16, plain, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_onednn_bf16, packed, true)->Apply(shapes);
using GemmPrecision = meshdit::Precision;
BENCHMARK_CAPTURE(BM_linear, kernel_f32, DType::F32, false, GemmPrecision::F32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_linear, kernel_bf16, DType::BF16, false, GemmPrecision::F32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_linear, kernel_bf16_precision, DType::BF16, false, GemmPrecision::BF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_linear, ops_bf16, DType::BF16, true, GemmPrecision::F32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_linear, kernel_bf16_precision, DType::BF16, false, GemmPrecision::BF16)->Apply(quant_shapes);
BENCHMARK_CAPTURE(BM_onednn_bf16, plain, false)->Apply(sd35_256_shapes);
BENCHMARK_CAPTURE(BM_linear, kernel_bf16_precision, DType::BF16, false, GemmPrecision::BF16)->Apply(sd35_256_shapes);
BENCHMARK_CAPTURE(BM_linear_quantized, q8_0, meshdit::QuantType::Q8_0)->Apply(quant_shapes);
BENCHMARK_CAPTURE(BM_linear_quantized, q4_k, meshdit::QuantType::Q4_K)->Apply(quant_shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // Sized once, before any kernel runs (older thread_pool.cpp crashed when a used pool was resized).
  if (meshdit::num_threads() != bench_threads()) meshdit::set_num_threads(bench_threads());
  benchmark::AddCustomContext("threads", std::to_string(meshdit::num_threads()));
  benchmark::AddCustomContext("openblas", std::string(openblas_get_config()) + ", core " + openblas_get_corename());
  benchmark::AddCustomContext("meshdit gemm", meshdit::cpu::gemm_kernel_line());
  const dnnl_version_t* v = dnnl_version();
  benchmark::AddCustomContext("onednn", std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                                            std::to_string(v->patch) + " (OpenMP)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
