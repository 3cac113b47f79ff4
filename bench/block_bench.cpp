// One SD3.5-Large joint transformer block on the CPU backend, as production runs it: bf16 weights in a
// safetensors file, memory-mapped through Checkpoint, f32 activations.
//
//   hidden 2432 = 38 heads x 64, 1024 image tokens + 333 text tokens, batch 1, qk_norm rms_norm,
//   not context_pre_only (a middle block of the model).
//
// BM_block runs the block's forward and, in the same iteration, the block's GEMMs alone (the same
// weights and input shapes through ops::linear, no bias, no activation), and reports
//   block_GFLOPs = (all linear FLOPs + attention 4 L^2 D H) / block time
//   gemm_GFLOPs  = all linear FLOPs / time of those GEMMs alone
//   ratio        = block_GFLOPs / gemm_GFLOPs   (the target is >= 0.70)
// BM_block_breakdown replays the block's forward op by op (the same calls joint_block.cpp and
// attention.cpp make) with a timer around each stage. BM_attention times ops::attention alone.
//
// MESHDIT_BENCH_THREADS sets the pool size (default 2).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "layers/joint_block.h"

namespace {

using meshdit::DType;
using meshdit::Tensor;
namespace ops = meshdit::ops;

constexpr int64_t kDim = 2432, kHeads = 38, kHeadDim = 64, kImg = 1024, kTxt = 333, kFF = 4 * kDim;
constexpr int64_t kL = kImg + kTxt;

int bench_threads() {
  const char* e = std::getenv("MESHDIT_BENCH_THREADS");
  const int v = e ? std::atoi(e) : 0;
  return v > 0 ? v : 2;
}

// Fast deterministic uniform(-scale, scale) (xorshift64*), enough for weights whose values do not matter.
std::vector<float> random_vec(size_t n, float scale, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  std::vector<float> v(n);
  for (auto& x : v) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    const uint64_t r = s * 0x2545F4914F6CDD1Dull;
    x = scale * (float(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  return v;
}

Tensor random_tensor(const meshdit::Shape& shape, float scale, uint64_t seed, DType dt = DType::F32) {
  Tensor t = Tensor::from_f32(shape, random_vec(size_t(meshdit::shape_numel(shape)), scale, seed));
  return dt == DType::F32 ? t : t.to(dt);
}

struct Setup {
  std::shared_ptr<meshdit::Checkpoint> ck;
  meshdit::JointTransformerBlock block;
  Tensor hidden, context, silu_temb;
  // The block's GEMMs: (input shape, weight) in forward order.
  struct Gemm {
    Tensor x;
    Tensor w;
  };
  std::vector<Gemm> gemms;
  double linear_flops = 0, attn_flops = 0;
};

// Writes random bf16 weights of one block to a temporary safetensors file, maps it, loads the block.
const Setup& setup() {
  static std::unique_ptr<Setup> s = [] {
    auto r = std::make_unique<Setup>();
    const std::string p = "transformer_blocks.0";
    std::vector<std::pair<std::string, Tensor>> ts;
    uint64_t seed = 1;
    auto lin = [&](const std::string& name, int64_t in, int64_t out) {
      const float sc = 1.0f / std::sqrt(float(in));
      ts.emplace_back(name + ".weight", random_tensor({out, in}, sc, seed++, DType::BF16));
      ts.emplace_back(name + ".bias", random_tensor({out}, sc, seed++, DType::BF16));
    };
    auto vec = [&](const std::string& name, int64_t n) {
      Tensor t = random_tensor({n}, 0.1f, seed++);
      float* d = t.f32();
      for (int64_t i = 0; i < n; ++i) d[i] += 1.0f;
      ts.emplace_back(name, t.to(DType::BF16));
    };
    lin(p + ".norm1.linear", kDim, 6 * kDim);
    lin(p + ".norm1_context.linear", kDim, 6 * kDim);
    for (const char* n : {".to_q", ".to_k", ".to_v", ".add_q_proj", ".add_k_proj", ".add_v_proj"})
      lin(p + ".attn" + n, kDim, kDim);
    for (const char* n : {".norm_q", ".norm_k", ".norm_added_q", ".norm_added_k"})
      vec(p + ".attn" + n + ".weight", kHeadDim);
    lin(p + ".attn.to_out.0", kDim, kDim);
    lin(p + ".attn.to_add_out", kDim, kDim);
    lin(p + ".ff.net.0.proj", kDim, kFF);
    lin(p + ".ff.net.2", kFF, kDim);
    lin(p + ".ff_context.net.0.proj", kDim, kFF);
    lin(p + ".ff_context.net.2", kFF, kDim);

    const char* tmpdir = std::getenv("TMPDIR");
    std::string path = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/meshdit_block_bench_XXXXXX";
    const int fd = mkstemp(path.data());
    MD_CHECK(fd >= 0, "mkstemp " + path);
    close(fd);
    auto st = meshdit::save_safetensors(path, ts);
    MD_CHECK(st.ok(), st.ok() ? "" : st.error().message);
    ts.clear();
    auto ck = meshdit::Checkpoint::open_file(path);
    MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
    r->ck = std::make_shared<meshdit::Checkpoint>(std::move(ck.value()));
    auto blk =
        meshdit::JointTransformerBlock::load(*r->ck, p, kDim, kHeads, kHeadDim, /*qk_norm=*/true,
                                             /*context_pre_only=*/false, meshdit::JointAttention::Order::ImageFirst);
    MD_CHECK(blk.ok(), blk.ok() ? "" : blk.error().message);
    r->block = std::move(blk.value());
    unlink(path.c_str());  // the mapping stays valid; nothing is left behind in TMPDIR
    MD_CHECK(r->block.attn.img.q.weight.dtype() == DType::BF16 && r->block.attn.img.q.weight.read_only(),
             "weights are expected to be mmapped bf16");

    r->hidden = random_tensor({1, kImg, kDim}, 1.0f, 1001);
    r->context = random_tensor({1, kTxt, kDim}, 1.0f, 1002);
    r->silu_temb = random_tensor({1, kDim}, 1.0f, 1003);

    const auto& b = r->block;
    auto add = [&](int64_t m, const Tensor& w) {
      r->gemms.push_back({random_tensor({m, w.size(1)}, 1.0f, 2000 + r->gemms.size()), w});
      r->linear_flops += 2.0 * double(m) * double(w.size(0)) * double(w.size(1));
    };
    add(1, b.norm1.linear.linear.weight);
    add(1, b.norm1_context->linear.linear.weight);
    for (const auto* qkv : {&b.attn.img, &b.attn.txt}) {
      const int64_t m = qkv == &b.attn.img ? kImg : kTxt;
      add(m, qkv->q.weight);
      add(m, qkv->k.weight);
      add(m, qkv->v.weight);
    }
    add(kImg, b.attn.to_out.weight);
    add(kTxt, b.attn.to_add_out->weight);
    add(kImg, b.ff.proj_in.weight);
    add(kImg, b.ff.proj_out.weight);
    add(kTxt, b.ff_context->proj_in.weight);
    add(kTxt, b.ff_context->proj_out.weight);
    r->attn_flops = 4.0 * double(kL) * double(kL) * double(kHeadDim) * double(kHeads);
    return r;
  }();
  return *s;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// CPU time of the whole process (all threads): on a machine shared with other jobs it measures the work
// done, where the wall time also counts the time the threads waited for a core.
double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double run_gemms(const Setup& s) {
  const auto t0 = Clock::now();
  for (const auto& g : s.gemms) {
    Tensor y = ops::linear(g.x, g.w);
    benchmark::DoNotOptimize(y.raw());
  }
  return seconds_since(t0);
}

void BM_block(benchmark::State& st) {
  const Setup& s = setup();
  double block_t = 0, gemm_t = 0, block_cpu = 0, gemm_cpu = 0;
  for (auto _ : st) {
    Tensor h = s.hidden.clone(), c = s.context.clone();
    const double c0 = process_cpu_seconds();
    const auto t0 = Clock::now();
    s.block(h, c, s.silu_temb);
    const double bt = seconds_since(t0);
    const double c1 = process_cpu_seconds();
    benchmark::DoNotOptimize(h.raw());
    st.SetIterationTime(bt);
    block_t += bt;
    block_cpu += c1 - c0;
    gemm_t += run_gemms(s);  // same iteration, so both see the same machine load
    gemm_cpu += process_cpu_seconds() - c1;
  }
  const double n = double(st.iterations());
  const double block_gflops = (s.linear_flops + s.attn_flops) * n / block_t * 1e-9;
  const double gemm_gflops = s.linear_flops * n / gemm_t * 1e-9;
  st.counters["block_ms"] = block_t / n * 1e3;
  st.counters["gemm_ms"] = gemm_t / n * 1e3;
  st.counters["block_GFLOPs"] = block_gflops;
  st.counters["gemm_GFLOPs"] = gemm_gflops;
  st.counters["ratio"] = block_gflops / gemm_gflops;
  st.counters["block_cpu_ms"] = block_cpu / n * 1e3;
  st.counters["gemm_cpu_ms"] = gemm_cpu / n * 1e3;
  st.SetLabel("linear " + std::to_string(int(s.linear_flops * 1e-9)) + " GFLOP + attention " +
              std::to_string(int(s.attn_flops * 1e-9)) + " GFLOP");
}

// The block's forward (joint_block.cpp, attention.cpp, norms.cpp) spelled out op by op with timers.
// It must stay the same sequence of calls as the real forward; BM_block is the number that counts.
void BM_block_breakdown(benchmark::State& st) {
  const Setup& s = setup();
  const auto& b = s.block;
  std::map<std::string, double> t, cpu;
  Clock::time_point t0;
  double c0 = 0;
  auto lap = [&](const char* name) {
    const auto now = Clock::now();
    const double c = process_cpu_seconds();
    t[name] += std::chrono::duration<double>(now - t0).count();
    cpu[name] += c - c0;
    t0 = now;
    c0 = c;
  };
  for (auto _ : st) {
    Tensor hidden = s.hidden.clone(), context = s.context.clone();
    const auto start = Clock::now();
    t0 = start;
    c0 = process_cpu_seconds();
    // norm1 / norm1_context (AdaLayerNormZero)
    Tensor emb_i = b.norm1.linear(s.silu_temb), emb_t = b.norm1_context->linear(s.silu_temb);
    lap("adaln_linear");
    auto ci = emb_i.chunk(6, 1), ct = emb_t.chunk(6, 1);
    Tensor ln_i = b.norm1.norm(hidden), ln_t = b.norm1_context->norm(context);
    lap("layer_norm");
    Tensor x = ops::modulate(ln_i, ci[0], ci[1]), c = ops::modulate(ln_t, ct[0], ct[1]);
    lap("modulate");
    // JointAttention
    auto split = [&](const Tensor& v) { return v.reshape({v.size(0), v.size(1), kHeads, v.size(2) / kHeads}); };
    meshdit::QKV::Heads i{split(b.attn.img.q(x)), split(b.attn.img.k(x)), split(b.attn.img.v(x))};
    meshdit::QKV::Heads tx{split(b.attn.txt.q(c)), split(b.attn.txt.k(c)), split(b.attn.txt.v(c))};
    lap("qkv_linear");
    i.q = (*b.attn.img.norm_q)(i.q);
    i.k = (*b.attn.img.norm_k)(i.k);
    tx.q = (*b.attn.txt.norm_q)(tx.q);
    tx.k = (*b.attn.txt.norm_k)(tx.k);
    lap("qk_rms_norm");
    Tensor q = meshdit::concat({i.q, tx.q}, 1), k = meshdit::concat({i.k, tx.k}, 1),
           v = meshdit::concat({i.v, tx.v}, 1);
    lap("concat");
    Tensor a = ops::attention(q, k, v, 1.0f / std::sqrt(float(kHeadDim)));
    lap("attention");
    Tensor o = meshdit::merge_heads(a);
    Tensor o_img = o.slice(1, 0, kImg), o_txt = o.slice(1, kImg, kL);
    Tensor attn_img = b.attn.to_out(o_img);
    Tensor attn_txt = (*b.attn.to_add_out)(o_txt);
    lap("out_linear");
    ops::add_gated_(hidden, ci[2], attn_img);
    lap("add_gated");
    Tensor n2 = b.norm2(hidden);
    lap("layer_norm");
    Tensor ff_in = ops::modulate(n2, ci[3], ci[4]);
    lap("modulate");
    Tensor up = b.ff.proj_in(ff_in, b.ff.act);
    lap("ff_up_gelu");
    Tensor down = b.ff.proj_out(up);
    lap("ff_down");
    ops::add_gated_(hidden, ci[5], down);
    lap("add_gated");
    ops::add_gated_(context, ct[2], attn_txt);
    lap("add_gated");
    Tensor n2c = b.norm2_context(context);
    lap("layer_norm");
    Tensor ffc_in = ops::modulate(n2c, ct[3], ct[4]);
    lap("modulate");
    Tensor upc = b.ff_context->proj_in(ffc_in, b.ff_context->act);
    lap("ff_up_gelu");
    Tensor downc = b.ff_context->proj_out(upc);
    lap("ff_down");
    ops::add_gated_(context, ct[5], downc);
    lap("add_gated");
    st.SetIterationTime(seconds_since(start));
    benchmark::DoNotOptimize(hidden.raw());
  }
  const double n = double(st.iterations());
  for (const auto& [name, sec] : t) st.counters[name + "_ms"] = sec / n * 1e3;
  if (std::getenv("MESHDIT_BENCH_CPU"))  // also the process CPU time of each stage
    for (const auto& [name, sec] : cpu) st.counters[name + "_cpu_ms"] = sec / n * 1e3;
}

void BM_attention(benchmark::State& st) {
  const int64_t L = st.range(0), H = st.range(1), D = st.range(2);
  Tensor q = random_tensor({1, L, H, D}, 1.0f, 11), k = random_tensor({1, L, H, D}, 1.0f, 12),
         v = random_tensor({1, L, H, D}, 1.0f, 13);
  const float scale = 1.0f / std::sqrt(float(D));
  for (auto _ : st) {
    Tensor o = ops::attention(q, k, v, scale);
    benchmark::DoNotOptimize(o.raw());
  }
  st.counters["GFLOPs"] = benchmark::Counter(4.0 * double(L) * double(L) * double(D) * double(H) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_attention)
    ->ArgNames({"L", "H", "D"})
    ->Args({kL, kHeads, kHeadDim})
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);
BENCHMARK(BM_block)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK(BM_block_breakdown)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(5.0);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // Sized once, before any kernel runs (older thread_pool.cpp crashed when a used pool was resized).
  if (meshdit::num_threads() != bench_threads()) meshdit::set_num_threads(bench_threads());
  benchmark::AddCustomContext("threads", std::to_string(meshdit::num_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
