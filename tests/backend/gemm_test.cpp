// The CPU backend's one GEMM (backend/cpu/gemm.h) against a double-precision triple loop: both operand
// layouts, strided rows as attention passes them, alpha/beta, odd and empty shapes, calls from several
// pool threads at once, and the bf16 path (with the linear kernel in bf16 precision).
#include "backend/cpu/gemm.h"
#include "backend/precision.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../test_util.h"
#include "backend/ops.h"
#include "backend_test_util.h"
#include "core/thread_pool.h"

using namespace meshdit;
using cpu::gemm;
using cpu::GemmOperand;
using test::all_close;
using test::kEps32;
using test::Vec;

namespace {

constexpr double kEpsBf16 = 1.0 / 256;  // bfloat16's unit roundoff is 2^-9; its epsilon 2^-8

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Element (i, j) of op(X) for X stored row-major with leading dimension ld.
double at(const std::vector<float>& x, int64_t ld, bool trans, int64_t i, int64_t j) {
  return trans ? x[size_t(j * ld + i)] : x[size_t(i * ld + j)];
}

struct Case {
  int64_t m, n, k;
  bool ta, tb;
  int64_t pad_a, pad_b, pad_c;  // extra elements per stored row beyond the logical width
  float alpha, beta;
};

// ref = alpha * op(A) op(B) + beta * C0 in double, tol = `eps_terms` x the sum of |terms| per element.
void reference(const Case& c, const std::vector<float>& a, int64_t lda, const std::vector<float>& b, int64_t ldb,
               const std::vector<float>& c0, int64_t ldc, double eps_terms, Vec& ref, Vec& tol) {
  ref.assign(size_t(c.m * c.n), 0.0);
  tol.assign(size_t(c.m * c.n), 0.0);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0, mag = 0;
      for (int64_t p = 0; p < c.k; ++p) {
        const double t = at(a, lda, c.ta, i, p) * at(b, ldb, c.tb, p, j);
        s += t;
        mag += std::fabs(t);
      }
      const double prev = c.beta == 0.0f ? 0.0 : double(c.beta) * c0[size_t(i * ldc + j)];
      ref[size_t(i * c.n + j)] = double(c.alpha) * s + prev;
      tol[size_t(i * c.n + j)] = eps_terms * (std::fabs(double(c.alpha)) * mag + std::fabs(prev)) + 1e-30;
    }
}

// Runs one case through gemm() in f32 (bf16 = false) or with both operands rounded to bf16.
::testing::AssertionResult run_case(const Case& c, bool bf16, unsigned seed) {
  const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
  const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
  const int64_t lda = a_cols + c.pad_a, ldb = b_cols + c.pad_b, ldc = c.n + c.pad_c;
  std::vector<float> a = random_floats(size_t(std::max<int64_t>(1, a_rows * lda)), seed);
  std::vector<float> b = random_floats(size_t(std::max<int64_t>(1, b_rows * ldb)), seed + 1);
  std::vector<float> cm = random_floats(size_t(std::max<int64_t>(1, c.m * ldc)), seed + 2);
  const std::vector<float> c0 = cm;
  std::vector<uint16_t> a16(a.size()), b16(b.size());
  if (bf16) {
    // The reference sees the rounded values: what is left is the f32 accumulation's error.
    cpu::to_bf16(a.data(), int64_t(a.size()), a16.data());
    cpu::to_bf16(b.data(), int64_t(b.size()), b16.data());
    for (size_t i = 0; i < a.size(); ++i) a[i] = bf16_to_f32(a16[i]);
    for (size_t i = 0; i < b.size(); ++i) b[i] = bf16_to_f32(b16[i]);
  }
  const DType dt = bf16 ? DType::BF16 : DType::F32;
  const GemmOperand ga{bf16 ? static_cast<const void*>(a16.data()) : a.data(), dt, lda, c.ta};
  const GemmOperand gb{bf16 ? static_cast<const void*>(b16.data()) : b.data(), dt, ldb, c.tb};
  gemm(c.m, c.n, c.k, c.alpha, ga, gb, c.beta, cm.data(), ldc);
  Vec ref, tol;
  reference(c, a, lda, b, ldb, c0, ldc, 8 * kEps32, ref, tol);
  std::vector<float> got(size_t(c.m * c.n));
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) got[size_t(i * c.n + j)] = cm[size_t(i * ldc + j)];
  // The padding of C beyond column n must be left alone.
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = c.n; j < ldc; ++j)
      if (cm[size_t(i * ldc + j)] != c0[size_t(i * ldc + j)])
        return ::testing::AssertionFailure() << "wrote C's padding at row " << i << " column " << j;
  return all_close(got, ref, tol);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      v.push_back({1, 1, 1, ta, tb, 0, 0, 0, 1.0f, 0.0f});
      v.push_back({3, 5, 7, ta, tb, 0, 0, 0, 1.0f, 0.0f});
      v.push_back({17, 33, 65, ta, tb, 3, 5, 2, 1.0f, 0.0f});
      v.push_back({64, 64, 64, ta, tb, 0, 0, 0, 0.125f, 1.0f});
      v.push_back({130, 257, 129, ta, tb, 1, 7, 9, 1.0f, 0.5f});
      v.push_back({7, 300, 1000, ta, tb, 0, 0, 0, -2.0f, 0.0f});
    }
  return v;
}

std::string name(const Case& c) {
  return std::to_string(c.m) + "x" + std::to_string(c.n) + "x" + std::to_string(c.k) + (c.ta ? " A^T" : " A") +
         (c.tb ? " B^T" : " B") + " alpha " + std::to_string(c.alpha) + " beta " + std::to_string(c.beta);
}

TEST(Gemm, F32MatchesTripleLoop) {
  unsigned seed = 1;
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    EXPECT_TRUE(run_case(c, false, seed += 3));
  }
}

TEST(Gemm, Bf16MatchesTripleLoopOnRoundedOperands) {
  if (!cpu::bf16_gemm_available()) GTEST_SKIP() << "no bf16 GEMM on this CPU: " << cpu::gemm_kernel_line();
  unsigned seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    EXPECT_TRUE(run_case(c, true, seed += 3));
  }
}

// Attention's two products on one head of q/k/v [L, H, D] (rows H * D apart, the head at column h * D):
// S = scale * Q K^T, then acc += S V into rows of a wider accumulator.
TEST(Gemm, AttentionStridedHeads) {
  const int64_t L = 77, H = 3, D = 40, h = 1;
  const std::vector<float> q = random_floats(size_t(L * H * D), 7), k = random_floats(size_t(L * H * D), 8),
                           v = random_floats(size_t(L * H * D), 9);
  const float scale = 1.0f / std::sqrt(float(D));
  std::vector<float> s(size_t(L * L));
  gemm(L, L, D, scale, {q.data() + h * D, DType::F32, H * D, false}, {k.data() + h * D, DType::F32, H * D, true},
       0.0f, s.data(), L);
  std::vector<float> acc = random_floats(size_t(L * H * D), 10);
  const std::vector<float> acc0 = acc;
  gemm(L, D, L, 1.0f, {s.data(), DType::F32, L, false}, {v.data() + h * D, DType::F32, H * D, false}, 1.0f,
       acc.data() + h * D, H * D);
  Vec sref(size_t(L * L)), stol(size_t(L * L));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) {
      double t = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double p = double(q[size_t((i * H + h) * D + d)]) * k[size_t((j * H + h) * D + d)];
        t += p;
        mag += std::fabs(p);
      }
      sref[size_t(i * L + j)] = t * scale;
      stol[size_t(i * L + j)] = 8 * kEps32 * mag * scale + 1e-30;
    }
  EXPECT_TRUE(all_close(s, sref, stol));
  std::vector<float> got;
  Vec ref, tol;
  for (int64_t i = 0; i < L; ++i)
    for (int64_t hh = 0; hh < H; ++hh)
      for (int64_t d = 0; d < D; ++d) {
        const size_t idx = size_t((i * H + hh) * D + d);
        got.push_back(acc[idx]);
        if (hh != h) {  // other heads untouched
          ref.push_back(acc0[idx]);
          tol.push_back(0);
          continue;
        }
        double t = acc0[idx], mag = std::fabs(acc0[idx]);
        for (int64_t j = 0; j < L; ++j) {
          const double p = double(s[size_t(i * L + j)]) * v[size_t((j * H + h) * D + d)];
          t += p;
          mag += std::fabs(p);
        }
        ref.push_back(t);
        tol.push_back(8 * kEps32 * mag + 1e-30);
      }
  EXPECT_TRUE(all_close(got, ref, tol));
}

TEST(Gemm, EmptyShapes) {
  std::vector<float> c = {1, 2, 3, 4};
  const float one = 1;
  gemm(2, 2, 0, 1.0f, {&one, DType::F32, 1, false}, {&one, DType::F32, 2, false}, 0.5f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{0.5f, 1, 1.5f, 2}));
  gemm(2, 2, 0, 1.0f, {&one, DType::F32, 1, false}, {&one, DType::F32, 2, false}, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{0, 0, 0, 0}));
  gemm(0, 2, 3, 1.0f, {&one, DType::F32, 3, false}, {&one, DType::F32, 2, false}, 0.0f, c.data(), 2);
}

// The pool's threads each build and cache their own primitives; the same shapes from 1-3 threads at once.
TEST(Gemm, ConcurrentCallsFromThePool) {
  test::for_thread_counts([] {
    const int64_t M = 48, N = 40, K = 56, tasks = 12;
    const std::vector<float> a = random_floats(size_t(tasks * M * K), 21), b = random_floats(size_t(N * K), 22);
    std::vector<float> c(size_t(tasks * M * N));
    parallel_for(tasks, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; ++t)
        gemm(M, N, K, 1.0f, {a.data() + t * M * K, DType::F32, K, false}, {b.data(), DType::F32, K, true}, 0.0f,
             c.data() + t * M * N, N);
    });
    for (int64_t t = 0; t < tasks; ++t) {
      Vec ref(size_t(M * N)), tol(size_t(M * N));
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0, mag = 0;
          for (int64_t p = 0; p < K; ++p) {
            const double x = double(a[size_t((t * M + i) * K + p)]) * b[size_t(j * K + p)];
            s += x;
            mag += std::fabs(x);
          }
          ref[size_t(i * N + j)] = s;
          tol[size_t(i * N + j)] = 8 * kEps32 * mag;
        }
      EXPECT_TRUE(all_close(std::vector<float>(c.begin() + t * M * N, c.begin() + (t + 1) * M * N), ref, tol))
          << "task " << t;
    }
  });
}

// The linear kernel in bf16 precision: bf16 weights as stored, x rounded to bf16, f32 accumulation.
// Against the exact product of the f32 inputs the error is bf16's (x's rounding, ~2^-9 relative per
// term); against the product of the rounded inputs it is f32's.
// Where the CPU has no bf16 kernel the same numbers come from the emulation (operands widened, f32 GEMM).
TEST(Gemm, LinearInBf16Precision) {
  for (DType wd : {DType::BF16, DType::F32}) {
    SCOPED_TRACE(dtype_name(wd));
  const int64_t M = 70, N = 90, K = 300;
  const Tensor x = test::random_tensor({M, K}, 31);
  // An f32 weight holding bf16 values: rounding it to bf16 is exact, so one reference serves both.
  const Tensor w = test::random_tensor({N, K}, 32, 0.1f).to(DType::BF16).to(wd);
  const Tensor bias = test::random_tensor({N}, 33);
  Tensor y;
  {
    ScopedPrecision bf16(Precision::BF16);
    y = ops::linear(x, w, &bias);
  }
  const std::vector<float> xv = x.to_vector(), wv = w.to(DType::F32).to_vector(), bv = bias.to_vector();
  Vec exact(size_t(M * N)), tol_bf16(size_t(M * N)), rounded(size_t(M * N)), tol_f32(size_t(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0, sr = 0, mag = 0;
      for (int64_t p = 0; p < K; ++p) {
        const double xw = double(xv[size_t(i * K + p)]);
        const double xr = double(bf16_to_f32(f32_to_bf16(xv[size_t(i * K + p)])));
        s += xw * wv[size_t(j * K + p)];
        sr += xr * wv[size_t(j * K + p)];
        mag += std::fabs(xw * wv[size_t(j * K + p)]);
      }
      const size_t o = size_t(i * N + j);
      exact[o] = s + bv[size_t(j)];
      rounded[o] = sr + bv[size_t(j)];
      tol_bf16[o] = kEpsBf16 * mag + 8 * kEps32 * std::fabs(bv[size_t(j)]);
      tol_f32[o] = 8 * kEps32 * (mag + std::fabs(bv[size_t(j)]));
    }
  const std::vector<float> got = y.to_vector();
  EXPECT_TRUE(all_close(got, exact, tol_bf16));
  EXPECT_TRUE(all_close(got, rounded, tol_f32));
  EXPECT_EQ(compute_precision(), Precision::F32);
  }
}

}  // namespace

namespace {

TEST(Precision, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(parse_precision("f32").value(), Precision::F32);
  EXPECT_EQ(parse_precision("bf16").value(), Precision::BF16);
  EXPECT_FALSE(parse_precision("fp16").ok());
  EXPECT_STREQ(precision_name(Precision::BF16), "bf16");
  // The default is bf16 only where it is faster: native bf16 dot products.
  EXPECT_EQ(default_compute_precision(), native_bf16() ? Precision::BF16 : Precision::F32);
  EXPECT_EQ(compute_precision(), Precision::F32);
  {
    ScopedPrecision p(Precision::BF16);
    EXPECT_EQ(compute_precision(), Precision::BF16);
  }
  EXPECT_EQ(compute_precision(), Precision::F32);
}

// gemm() on bf16 operands, transposed or not, equals the f32 product of the widened values: the emulation
// and the native kernel agree to f32 rounding.
TEST(Gemm, Bf16OperandsEqualTheirWidenedF32Product) {
  const int64_t M = 37, N = 45, K = 130;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Tensor a = test::random_tensor(ta ? Shape{K, M} : Shape{M, K}, 41);
      const Tensor b = test::random_tensor(tb ? Shape{N, K} : Shape{K, N}, 42);
      const Tensor ab = a.to(DType::BF16), bb = b.to(DType::BF16);
      const Tensor af = ab.to(DType::F32), bf = bb.to(DType::F32);
      std::vector<float> c16(size_t(M * N)), c32(size_t(M * N));
      cpu::gemm(M, N, K, 1.0f, {ab.raw(), DType::BF16, ta ? M : K, ta}, {bb.raw(), DType::BF16, tb ? K : N, tb}, 0.0f,
                c16.data(), N);
      cpu::gemm(M, N, K, 1.0f, {af.raw(), DType::F32, ta ? M : K, ta}, {bf.raw(), DType::F32, tb ? K : N, tb}, 0.0f,
                c32.data(), N);
      for (size_t i = 0; i < c16.size(); ++i) EXPECT_NEAR(c16[i], c32[i], 1e-4f * (1.0f + std::fabs(c32[i])));
    }
}

}  // namespace
