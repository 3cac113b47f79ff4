// The CPU attention kernel (backend/cpu/attention.h) in both precisions against a naive double-precision
// softmax(q k^T * scale + bias) v: the head dims the models use (64, 128) and a small one (16), lengths that
// are not multiples of the kernel's query and key blocks, q/k/v as strided views of a packed projection (as
// the layers pass them), key-padding and causal masks. In bf16 precision the reference is computed on the
// operands the kernel rounds (q * scale and k to bf16; the softmax and P V stay f32), so the bound is f32's
// own, as in f32 precision. Every softmax ISA this CPU runs is forced
// in turn (the AVX2 path on an AVX-512 machine too).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "../test_util.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/softmax_isa.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "backend_test_util.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

using namespace meshdit;
using test::all_close;
using test::for_thread_counts;
using test::host_values;
using test::random_tensor;
using test::Vec;

namespace {


struct Shape5 {
  int64_t B, Lq, Lk, H, D;
  std::string str() const {
    std::ostringstream os;
    os << "B=" << B << " Lq=" << Lq << " Lk=" << Lk << " H=" << H << " D=" << D;
    return os.str();
  }
};

// Sets the attention precision for one scope and restores F32, the default the other tests assume.
struct PrecisionScope {
  explicit PrecisionScope(Precision p) { ok = cpu::set_attention_precision(p).ok(); }
  ~PrecisionScope() { (void)cpu::set_attention_precision(Precision::F32); }
  bool ok = false;
};

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Reference in double. rounded: q * scale and k rounded to bf16 first (then the scale is 1), as the
// kernel's bf16 path does. bias: [B or 1, 1, 1, Lk] (key padding) or empty; causal: key j > query i masked.
Vec ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
                  bool rounded) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  std::vector<float> qv = host_values(q), kv = host_values(k), vv = host_values(v);
  const std::vector<float> bv = bias ? host_values(*bias) : std::vector<float>();
  if (rounded) {
    for (float& x : qv) x = round_bf16(x * scale);
    for (float& x : kv) x = round_bf16(x);
  }
  const double s = rounded ? 1.0 : double(scale);
  Vec out(static_cast<size_t>(B * Lq * H * D), 0.0), p(static_cast<size_t>(Lk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        const float* qi = qv.data() + ((b * Lq + i) * H + h) * D;
        double m = -INFINITY;
        for (int64_t j = 0; j < Lk; ++j) {
          const float* kj = kv.data() + ((b * Lk + j) * H + h) * D;
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += double(qi[e]) * kj[e];
          d *= s;
          if (bias) d += bv[size_t((bias->size(0) > 1 ? b : 0) * Lk + j)];
          if (causal && j > i) d = -INFINITY;
          p[size_t(j)] = d;
          m = std::max(m, d);
        }
        if (m == -INFINITY) continue;
        double l = 0;
        for (double& x : p) l += (x = std::exp(x - m));
        double* o = out.data() + ((b * Lq + i) * H + h) * D;
        for (int64_t j = 0; j < Lk; ++j) {
          const float* vj = vv.data() + ((b * Lk + j) * H + h) * D;
          for (int64_t e = 0; e < D; ++e) o[e] += p[size_t(j)] * vj[e] / l;
        }
      }
  return out;
}

struct Views {
  Tensor packed, q, k, v;
};

// q, k, v as thirds of one packed [B, L, 3 H D] projection (Lq == Lk), the layout a fused qkv linear gives;
// otherwise q alone and k, v from a second packed tensor.
Views packed_qkv(const Shape5& s, unsigned seed) {
  Views t;
  t.packed = random_tensor({s.B, s.Lk, 3 * s.H * s.D}, seed, 1.5f);
  auto parts = t.packed.reshape({s.B, s.Lk, 3 * s.H, s.D}).chunk(3, 2);
  t.k = parts[1];
  t.v = parts[2];
  t.q = s.Lq == s.Lk ? parts[0] : random_tensor({s.B, s.Lq, s.H, s.D}, seed + 7, 1.5f);
  return t;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (float x : host_values(t)) m = std::max(m, double(std::fabs(x)));
  return m;
}

const Shape5 kShapes[] = {
    {1, 300, 300, 2, 64}, {1, 257, 513, 2, 128}, {2, 129, 70, 3, 16}, {1, 1, 600, 1, 64}, {1, 520, 5, 2, 128},
};

TEST(CpuAttention, F32MatchesDoubleReference) {
  unsigned seed = 4100;
  for (const auto& s : kShapes) {
    SCOPED_TRACE(s.str());
    Views t = packed_qkv(s, seed += 11);
    ASSERT_NE(t.k.stride(1), s.H * s.D);  // strided rows, as the layers pass them
    const float scale = 1.0f / std::sqrt(float(s.D));
    const Vec ref = ref_attention(t.q, t.k, t.v, scale, nullptr, false, false);
    const double tol = 1e-5 * max_abs(t.v);
    for_thread_counts(
        [&] { EXPECT_TRUE(all_close(host_values(ops::attention(t.q, t.k, t.v, scale)), ref, Vec(ref.size(), tol))); });
  }
}

TEST(CpuAttention, Bf16MatchesReferenceOnRoundedOperands) {
  PrecisionScope bf16(Precision::BF16);
  if (!bf16.ok) GTEST_SKIP() << "no bf16 GEMM on this CPU: " << cpu::gemm_kernel_line();
  ASSERT_EQ(cpu::attention_precision(), Precision::BF16);
  unsigned seed = 4200;
  for (const auto& s : kShapes) {
    SCOPED_TRACE(s.str());
    Views t = packed_qkv(s, seed += 11);
    const float scale = 1.0f / std::sqrt(float(s.D));
    const Vec ref = ref_attention(t.q, t.k, t.v, scale, nullptr, false, true);
    // Only the operands of Q K^T are rounded: what remains is f32's own error.
    const double tol = 1e-5 * max_abs(t.v);
    for_thread_counts(
        [&] { EXPECT_TRUE(all_close(host_values(ops::attention(t.q, t.k, t.v, scale)), ref, Vec(ref.size(), tol))); });
    // And against the unrounded reference, within what a bf16 mode promises (1e-2 of the values' scale).
    const Vec exact = ref_attention(t.q, t.k, t.v, scale, nullptr, false, false);
    EXPECT_TRUE(
        all_close(host_values(ops::attention(t.q, t.k, t.v, scale)), exact, Vec(exact.size(), 1e-2 * max_abs(t.v))));
  }
}

// Qwen-Image's key padding (-inf bias on the last keys of one batch item, broadcast over heads and queries)
// and causal order, across key blocks, in both precisions.
TEST(CpuAttention, KeyPaddingAndCausalMasksInBothPrecisions) {
  for (bool bf16 : {false, true}) {
    PrecisionScope prec(bf16 ? Precision::BF16 : Precision::F32);
    if (!prec.ok) continue;
    SCOPED_TRACE(bf16 ? "bf16" : "f32");
    const Shape5 s{2, 300, 300, 2, 64};
    Views t = packed_qkv(s, 4300);
    const float scale = 1.0f / std::sqrt(float(s.D));
    Tensor bias = random_tensor({2, 1, 1, s.Lk}, 4301, 0.5f);
    float* bp = bias.f32();
    for (int64_t j = s.Lk - 40; j < s.Lk; ++j) bp[s.Lk + j] = -INFINITY;  // batch item 1: 40 padded keys
    const double tol = 1e-5 * max_abs(t.v);
    for (bool causal : {false, true}) {
      SCOPED_TRACE(causal ? "causal" : "not causal");
      AttentionMask mask;
      mask.bias = bias;
      mask.causal = causal;
      const Vec ref = ref_attention(t.q, t.k, t.v, scale, &bias, causal, bf16);
      EXPECT_TRUE(all_close(host_values(ops::attention(t.q, t.k, t.v, scale, &mask)), ref, Vec(ref.size(), tol)));
    }
  }
}

// Ring attention in bf16: keys merged chunk by chunk (each chunk rounded in its own call) give the one-call
// result on the rounded operands, whatever the order.
TEST(CpuAttention, Bf16ChunkedAccumulateMatchesReference) {
  PrecisionScope bf16(Precision::BF16);
  if (!bf16.ok) GTEST_SKIP() << "no bf16 GEMM on this CPU: " << cpu::gemm_kernel_line();
  const Shape5 s{1, 130, 600, 2, 64};
  Views t = packed_qkv(s, 4600);
  const float scale = 1.0f / std::sqrt(float(s.D));
  const Vec ref = ref_attention(t.q, t.k, t.v, scale, nullptr, false, true);
  const double tol = 1e-5 * max_abs(t.v);
  const int64_t cuts[] = {0, 70, 333, 600};
  for (bool reversed : {false, true}) {
    SCOPED_TRACE(reversed ? "reversed" : "in order");
    AttentionState st = ops::attention_begin(t.q);
    for (int c = 0; c < 3; ++c) {
      const int i = reversed ? 2 - c : c;
      ops::attention_accumulate(t.q, t.k.slice(1, cuts[i], cuts[i + 1]), t.v.slice(1, cuts[i], cuts[i + 1]), scale, st);
    }
    EXPECT_TRUE(all_close(host_values(ops::attention_end(st)), ref, Vec(ref.size(), tol)));
  }
}

// Restores the CPU's best softmax ISA at the end of a scope.
struct IsaScope {
  ~IsaScope() { (void)cpu::set_softmax_isa(cpu::best_softmax_isa()); }
};

std::vector<cpu::SoftmaxIsa> runnable_isas() {
  std::vector<cpu::SoftmaxIsa> out;
  for (auto isa : {cpu::SoftmaxIsa::Portable, cpu::SoftmaxIsa::Avx2, cpu::SoftmaxIsa::Avx512}) {
    IsaScope restore;
    if (cpu::set_softmax_isa(isa).ok()) out.push_back(isa);
  }
  return out;
}

// exp(x - sub) and its sum against double, on row lengths around the vector widths (tails, masked lanes),
// with -inf entries (masked keys) that must give exactly 0.
TEST(CpuAttention, SoftmaxKernelsOnEveryIsaMatchDouble) {
  IsaScope restore;
  ASSERT_GE(runnable_isas().size(), 1u + !!__builtin_cpu_supports("avx2") + !!__builtin_cpu_supports("avx512f"));
  for (cpu::SoftmaxIsa isa : runnable_isas()) {
    SCOPED_TRACE(cpu::softmax_isa_name(isa));
    ASSERT_TRUE(cpu::set_softmax_isa(isa).ok());
    const cpu::SoftmaxKernels& k = cpu::softmax_kernels();
    for (int64_t n : {0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100, 256}) {
      SCOPED_TRACE("n=" + std::to_string(n));
      std::vector<float> x = host_values(random_tensor({n + 1}, unsigned(4400 + n), 30.0f));
      x.pop_back();
      for (int64_t i = 3; i < n; i += 5) x[size_t(i)] = -INFINITY;
      double want_max = double(-1e30f);
      for (float v : x) want_max = std::max(want_max, double(v));
      const float got_max = k.max_of(x.data(), n, -1e30f);
      EXPECT_EQ(double(got_max), want_max);
      const float sub = n ? got_max : 0.0f;
      Vec want(x.size());
      double want_sum = 0;
      // exp of the kernel's own input, x - sub rounded to float
      for (size_t i = 0; i < x.size(); ++i) want_sum += (want[i] = std::exp(double(x[i] - sub)));
      std::vector<float> y = x;
      const float got_sum = k.exp_sub_sum(y.data(), n, sub);
      Vec tol(want.size());
      for (size_t i = 0; i < want.size(); ++i) tol[i] = 4e-7 * want[i] + 1e-37;
      EXPECT_TRUE(all_close(y, want, tol));
      for (size_t i = 0; i < x.size(); ++i) {
        if (std::isinf(x[i])) {
          EXPECT_EQ(y[i], 0.0f);
        }
      }
      EXPECT_NEAR(got_sum, want_sum, 1e-6 * want_sum + 1e-37);
    }
  }
}

TEST(CpuAttention, EveryRunnableSoftmaxIsaGivesTheSameAttention) {
  IsaScope restore;
  const Shape5 s{1, 300, 300, 2, 64};
  Views t = packed_qkv(s, 4500);
  const float scale = 1.0f / std::sqrt(float(s.D));
  const Vec ref = ref_attention(t.q, t.k, t.v, scale, nullptr, true, false);
  AttentionMask causal;
  causal.causal = true;
  for (cpu::SoftmaxIsa isa : runnable_isas()) {
    SCOPED_TRACE(cpu::softmax_isa_name(isa));
    ASSERT_TRUE(cpu::set_softmax_isa(isa).ok());
    EXPECT_TRUE(all_close(host_values(ops::attention(t.q, t.k, t.v, scale, &causal)), ref,
                          Vec(ref.size(), 1e-5 * max_abs(t.v))));
  }
  EXPECT_EQ(cpu::best_softmax_isa(), __builtin_cpu_supports("avx512f") ? cpu::SoftmaxIsa::Avx512
                                     : __builtin_cpu_supports("avx2")  ? cpu::SoftmaxIsa::Avx2
                                                                       : cpu::SoftmaxIsa::Portable);
}

TEST(CpuAttention, PrecisionDefaultsToF32AndBf16IsRefusedWithoutAKernel) {
  EXPECT_EQ(cpu::attention_precision(), Precision::F32);
  const Status st = cpu::set_attention_precision(Precision::BF16);
  EXPECT_EQ(st.ok(), cpu::bf16_gemm_available());
  EXPECT_TRUE(cpu::set_attention_precision(Precision::F32).ok());
  EXPECT_EQ(cpu::attention_precision(), Precision::F32);
}

// --precision bf16 (set_compute_precision) takes attention along where the CPU has bf16 dot products; emulated
// bf16 leaves it f32, and f32 puts it back.
TEST(CpuAttention, ComputePrecisionSetsAttentionPrecision) {
  {
    ScopedPrecision bf16(Precision::BF16);
    EXPECT_EQ(cpu::attention_precision(), native_bf16() ? Precision::BF16 : Precision::F32);
  }
  EXPECT_EQ(cpu::attention_precision(), Precision::F32);
}

}  // namespace
