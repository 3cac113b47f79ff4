// Every kernel behind meshdit::ops, on every compiled backend (backend_test_util.h), checked against naive
// double-precision loops written here. Tolerances are at float32 level: per element, a few float32
// epsilons times the magnitude of the terms that produced it (for sums, the sum of |terms|); attention
// follows the flash-attention rule (at most twice the error of a plain float32 implementation of
// softmax(QK^T * scale) V, measured here too).
#include "backend/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend_test_util.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

using namespace meshdit;

namespace {

using test::all_close;
using test::default_threads;
using test::for_thread_counts;
using test::host_values;
using test::kEps32;
using test::random_tensor;
using test::ThreadCountGuard;
using test::to_d;
using test::Vec;

MESHDIT_BACKEND_SUITE(OpsLinear);
MESHDIT_BACKEND_SUITE(OpsTable);
MESHDIT_BACKEND_SUITE(OpsNorms);
MESHDIT_BACKEND_SUITE(OpsModulate);
MESHDIT_BACKEND_SUITE(OpsActivation);
MESHDIT_BACKEND_SUITE(OpsSoftmax);
MESHDIT_BACKEND_SUITE(OpsAttention);
MESHDIT_BACKEND_SUITE(OpsRope);
MESHDIT_BACKEND_SUITE(OpsTimestep);
MESHDIT_BACKEND_SUITE(OpsPatchify);

TEST(ThreadCount, RestoredAfterSweeps) {
  const int before = num_threads();
  for_thread_counts([] {});
  EXPECT_EQ(num_threads(), before);
  EXPECT_EQ(before, default_threads());
}

// Regression: workers started by a resize after earlier parallel work used to wake at once on the finished
// job (a null function) and crash. Every index must be visited exactly once at every count.
TEST(ThreadCount, ResizeAfterParallelWork) {
  ThreadCountGuard guard;
  for (int round = 0; round < 3; ++round) {
    for (int t : {3, 1, 2, 4, 3}) {
      set_num_threads(t);
      std::vector<int> hits(1000, 0);
      parallel_for(int64_t(hits.size()), [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
      });
      for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "threads=" << t << " index " << i;
    }
  }
}

// ---- activations -----------------------------------------------------------------------------------

constexpr Act kActs[] = {Act::None,      Act::GeluTanh, Act::GeluErf, Act::SiLU,
                         Act::QuickGelu, Act::Relu,     Act::Tanh};

double act_ref(double x, Act a) {
  switch (a) {
    case Act::None:
      return x;
    case Act::Relu:
      return x > 0 ? x : 0.0;
    case Act::GeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    case Act::GeluErf:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Act::SiLU:
      return x / (1.0 + std::exp(-x));
    case Act::QuickGelu:
      return x / (1.0 + std::exp(-1.702 * x));
    case Act::Tanh:
      return std::tanh(x);
  }
  return 0;
}

// ---- linear --------------------------------------------------------------------------------------

struct LinearRef {
  Vec y, tol;
};

// y[m, n] = act(sum_k x[m, k] w[n, k] + b[n]) in double; w holds the stored (already rounded) weights.
LinearRef ref_linear(const Vec& x, const Vec& w, const Vec* b, int64_t M, int64_t N, int64_t K, Act act) {
  LinearRef r{Vec(size_t(M * N)), Vec(size_t(M * N))};
  for (int64_t m = 0; m < M; ++m) {
    const double* xr = x.data() + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const double* wr = w.data() + n * K;
      double s = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        s += xr[k] * wr[k];
        mag += std::fabs(xr[k] * wr[k]);
      }
      if (b) {
        s += (*b)[size_t(n)];
        mag += std::fabs((*b)[size_t(n)]);
      }
      const double y = act_ref(s, act);
      r.y[size_t(m * N + n)] = y;
      // Accumulation error (the activations' slopes are below 1.2), plus the activation's own rounding.
      r.tol[size_t(m * N + n)] = 12 * kEps32 * mag + 8 * kEps32 * (std::fabs(y) + std::fabs(s)) + 1e-30;
    }
  }
  return r;
}

struct LinearCase {
  int64_t M, N, K;
};

struct LinearData {
  Tensor x, w, b;
  Vec xd, wd, bd;
};

LinearData make_linear(int64_t M, int64_t N, int64_t K, DType wdt, unsigned seed) {
  LinearData d;
  d.x = random_tensor({M, K}, seed);
  d.w = random_tensor({N, K}, seed + 1, 1.0f / std::sqrt(float(K))).to(wdt);
  d.b = random_tensor({N}, seed + 2, 0.5f);
  d.xd = to_d(d.x);
  d.wd = to_d(d.w);  // exact values of the stored weights
  d.bd = to_d(d.b);
  return d;
}

TEST_P(OpsLinear, EveryDtypeBiasAndActivation) {
  const LinearCase cases[] = {{1, 7, 5}, {3, 33, 17}, {70, 260, 65}};
  unsigned seed = 100;
  for (const auto& c : cases) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      LinearData d = make_linear(c.M, c.N, c.K, dt, seed += 3);
      const Tensor x = on(d.x), w = ops::place(d.w, device()), b = ops::place(d.b, device());
      for (bool with_bias : {false, true}) {
        for (Act act : kActs) {
          SCOPED_TRACE(std::string("M=") + std::to_string(c.M) + " N=" + std::to_string(c.N) +
                       " K=" + std::to_string(c.K) + " w=" + dtype_name(dt) + " bias=" + std::to_string(with_bias) +
                       " act=" + act_name(act));
          LinearRef r = ref_linear(d.xd, d.wd, with_bias ? &d.bd : nullptr, c.M, c.N, c.K, act);
          Tensor y = ops::linear(x, w, with_bias ? &b : nullptr, act);
          EXPECT_EQ(y.shape(), (Shape{c.M, c.N}));
          EXPECT_EQ(y.dtype(), DType::F32);
          EXPECT_TRUE(close(y, r.y, r.tol));
        }
      }
    }
  }
}

// Shapes that take each branch of the work grid: M = 1 with N*K large enough to thread, N > 256 and
// M > 64 (column blocks and several 128-row weight tiles per block), N <= 64 with M large (row blocks),
// and odd sizes everywhere; with 1, 2 and 3 threads.
TEST_P(OpsLinear, ThreadedTiling) {
  const LinearCase cases[] = {{1, 513, 600}, {130, 300, 67}, {200, 40, 100}, {129, 257, 129}, {65, 1, 300}};
  unsigned seed = 200;
  for (const auto& c : cases) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      SCOPED_TRACE(std::string("M=") + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
                   " w=" + dtype_name(dt));
      LinearData d = make_linear(c.M, c.N, c.K, dt, seed += 3);
      const Act act = dt == DType::F32 ? Act::None : dt == DType::BF16 ? Act::GeluTanh : Act::SiLU;
      LinearRef r = ref_linear(d.xd, d.wd, &d.bd, c.M, c.N, c.K, act);
      LinearRef r0 = ref_linear(d.xd, d.wd, nullptr, c.M, c.N, c.K, Act::None);
      const Tensor x = on(d.x), w = ops::place(d.w, device()), b = ops::place(d.b, device());
      for_thread_counts([&] {
        EXPECT_TRUE(close(ops::linear(x, w, &b, act), r.y, r.tol));
        EXPECT_TRUE(close(ops::linear(x, w), r0.y, r0.tol));
      });
    }
  }
}

TEST_P(OpsLinear, ThreeDimensionalAndStridedInputs) {
  const int64_t B = 2, L = 37, K = 24, N = 45;
  Tensor wide = on(random_tensor({B, L, K + 16}, 301));
  Tensor x = wide.slice(2, 5, 5 + K);  // [B, L, K], row stride K + 16
  ASSERT_FALSE(x.is_contiguous());
  Tensor w = ops::place(random_tensor({N, K}, 302, 0.2f).to(DType::BF16), device());
  Tensor b = ops::place(random_tensor({N}, 303).to(DType::BF16), device());  // a bf16 bias is widened too
  const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);
  LinearRef r = ref_linear(xd, wd, &bd, B * L, N, K, Act::GeluErf);
  for_thread_counts([&] {
    Tensor y = ops::linear(x, w, &b, Act::GeluErf);
    EXPECT_EQ(y.shape(), (Shape{B, L, N}));
    EXPECT_TRUE(close(y, r.y, r.tol));
    // Contiguous 3-D input, same values.
    EXPECT_TRUE(close(ops::linear(x.contiguous(), w, &b, Act::GeluErf), r.y, r.tol));
  });
  // A bf16 activation input is widened; a transposed (non-contiguous) f32 weight is made contiguous.
  Tensor xb = x.to(DType::BF16);
  Tensor wt = ops::place(random_tensor({K, N}, 304, 0.2f), device());
  Tensor wv = wt.permute({1, 0});  // [N, K] view
  LinearRef rb = ref_linear(to_d(xb), to_d(wv), nullptr, B * L, N, K, Act::QuickGelu);
  Tensor yb = ops::linear(xb, wv, nullptr, Act::QuickGelu);
  EXPECT_EQ(yb.shape(), (Shape{B, L, N}));
  EXPECT_TRUE(close(yb, rb.y, rb.tol));
}

// The backend contract allows x rows with stride(0) > K; ops always passes contiguous rows, so call the
// kernel directly.
TEST_P(OpsTable, LinearStridedRows) {
  const int64_t M = 70, N = 300, K = 33;
  Tensor wide = on(random_tensor({M, K + 7}, 401));
  Tensor x = wide.slice(1, 3, 3 + K);
  ASSERT_EQ(x.stride(0), K + 7);
  for (DType dt : {DType::F32, DType::F16}) {
    Tensor w = ops::place(random_tensor({N, K}, 402, 0.3f).to(dt), device());
    Tensor b = ops::place(random_tensor({N}, 403), device());
    const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);
    LinearRef r = ref_linear(xd, wd, &bd, M, N, K, Act::SiLU);
    for_thread_counts([&] {
      Tensor y = empty({M, N});
      backend().linear(x, w, &b, Act::SiLU, y);
      EXPECT_TRUE(close(y, r.y, r.tol));
    });
  }
}

// ---- norms ----------------------------------------------------------------------------------------

struct NormRef {
  Vec y, tol;
};

NormRef ref_layer_norm(const Vec& x, int64_t C, const Vec* w, const Vec* b, double eps) {
  const int64_t R = int64_t(x.size()) / C;
  NormRef r{Vec(x.size()), Vec(x.size())};
  for (int64_t i = 0; i < R; ++i) {
    const double* xr = x.data() + i * C;
    double mean = 0, var = 0, amax = 0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c], amax = std::max(amax, std::fabs(xr[c]));
    mean /= double(C);
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= double(C);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) {
      const double n = (xr[c] - mean) * inv;
      const double wc = w ? (*w)[size_t(c)] : 1.0, bc = b ? (*b)[size_t(c)] : 0.0;
      r.y[size_t(i * C + c)] = n * wc + bc;
      // float32 rounding of x - mean (relative to the row's magnitude), of the scale, then of * w + b.
      r.tol[size_t(i * C + c)] = 8 * kEps32 * ((amax * inv + std::fabs(n)) * std::fabs(wc) + std::fabs(bc)) + 1e-30;
    }
  }
  return r;
}

NormRef ref_rms_norm(const Vec& x, int64_t C, const Vec* w, double eps) {
  const int64_t R = int64_t(x.size()) / C;
  NormRef r{Vec(x.size()), Vec(x.size())};
  for (int64_t i = 0; i < R; ++i) {
    const double* xr = x.data() + i * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
    const double inv = 1.0 / std::sqrt(ss / double(C) + eps);
    for (int64_t c = 0; c < C; ++c) {
      const double y = xr[c] * inv * (w ? (*w)[size_t(c)] : 1.0);
      r.y[size_t(i * C + c)] = y;
      r.tol[size_t(i * C + c)] = 8 * kEps32 * std::fabs(y) + 1e-30;
    }
  }
  return r;
}

TEST_P(OpsNorms, LayerNormWithAndWithoutAffine) {
  const Shape shapes[] = {{2, 50, 48}, {3, 7}, {5, 1}, {1, 1, 257}};
  unsigned seed = 500;
  for (const auto& s : shapes) {
    const int64_t C = s.back();
    Tensor xh = random_tensor(s, ++seed, 2.0f);
    for (int64_t i = 0; i < xh.numel(); ++i) xh.f32()[i] += 3.0f;  // a mean offset
    const Tensor x = on(xh), w = on(random_tensor({C}, ++seed)), b = on(random_tensor({C}, ++seed));
    const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);
    SCOPED_TRACE("shape " + shape_str(s));
    for (float eps : {1e-6f, 1e-5f}) {
      NormRef plain = ref_layer_norm(xd, C, nullptr, nullptr, eps);
      NormRef affine = ref_layer_norm(xd, C, &wd, &bd, eps);
      NormRef w_only = ref_layer_norm(xd, C, &wd, nullptr, eps);
      for_thread_counts([&] {
        Tensor y = ops::layer_norm(x, nullptr, nullptr, eps);
        EXPECT_EQ(y.shape(), s);
        EXPECT_TRUE(close(y, plain.y, plain.tol));
        EXPECT_TRUE(close(ops::layer_norm(x, &w, &b, eps), affine.y, affine.tol));
        EXPECT_TRUE(close(ops::layer_norm(x, &w, nullptr, eps), w_only.y, w_only.tol));
      });
    }
  }
  // bf16 affine parameters, and a non-contiguous input.
  Tensor xt = on(random_tensor({40, 2, 24}, 550));
  Tensor x = xt.permute({1, 0, 2});  // [2, 40, 24]
  Tensor w = ops::place(random_tensor({24}, 551).to(DType::BF16), device());
  Tensor b = ops::place(random_tensor({24}, 552).to(DType::BF16), device());
  const Vec wd = to_d(w), bd = to_d(b);
  NormRef r = ref_layer_norm(to_d(x), 24, &wd, &bd, 1e-6);
  Tensor y = ops::layer_norm(x, &w, &b, 1e-6f);
  EXPECT_EQ(y.shape(), (Shape{2, 40, 24}));
  EXPECT_TRUE(close(y, r.y, r.tol));
}

TEST_P(OpsNorms, RmsNormWithAndWithoutWeight) {
  const Shape shapes[] = {{2, 50, 48}, {3, 7}, {5, 1}, {1, 2, 3, 129}};
  unsigned seed = 600;
  for (const auto& s : shapes) {
    const int64_t C = s.back();
    const Tensor x = on(random_tensor(s, ++seed, 3.0f));
    const Tensor w = on(random_tensor({C}, ++seed));
    const Vec xd = to_d(x), wd = to_d(w);
    SCOPED_TRACE("shape " + shape_str(s));
    NormRef plain = ref_rms_norm(xd, C, nullptr, 1e-6), weighted = ref_rms_norm(xd, C, &wd, 1e-6);
    for_thread_counts([&] {
      Tensor y = ops::rms_norm(x, nullptr, 1e-6f);
      EXPECT_EQ(y.shape(), s);
      EXPECT_TRUE(close(y, plain.y, plain.tol));
      EXPECT_TRUE(close(ops::rms_norm(x, &w, 1e-6f), weighted.y, weighted.tol));
    });
  }
  // eps dominates a tiny row; bf16 weight; strided input.
  Tensor x = on(random_tensor({4, 16}, 650, 1e-4f));
  Tensor w = ops::place(random_tensor({16}, 651).to(DType::BF16), device());
  const Vec wd = to_d(w);
  NormRef r = ref_rms_norm(to_d(x), 16, &wd, 1e-2);
  EXPECT_TRUE(close(ops::rms_norm(x, &w, 1e-2f), r.y, r.tol));
  Tensor xs = on(random_tensor({6, 40}, 652)).slice(1, 4, 36);
  NormRef rs = ref_rms_norm(to_d(xs), 32, nullptr, 1e-6);
  EXPECT_TRUE(close(ops::rms_norm(xs, nullptr, 1e-6f), rs.y, rs.tol));
}

// The kernels read strided rows (stride(0) > C) directly.
TEST_P(OpsTable, NormsStridedRows) {
  const int64_t R = 40, C = 24;
  Tensor x = on(random_tensor({R, C + 5}, 700)).slice(1, 2, 2 + C);
  Tensor w = on(random_tensor({C}, 701)), b = on(random_tensor({C}, 702));
  const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);
  NormRef ln = ref_layer_norm(xd, C, &wd, &bd, 1e-6), rms = ref_rms_norm(xd, C, &wd, 1e-6);
  for_thread_counts([&] {
    Tensor y = empty({R, C});
    backend().layer_norm(x, &w, &b, 1e-6f, y);
    EXPECT_TRUE(close(y, ln.y, ln.tol));
    Tensor z = empty({R, C});
    backend().rms_norm(x, &w, 1e-6f, z);
    EXPECT_TRUE(close(z, rms.y, rms.tol));
  });
}

// ---- modulation and gated residuals -------------------------------------------------------------------

TEST_P(OpsModulate, ShiftScaleAsChunksOfEmbedding) {
  const int64_t B = 2, L = 37, C = 24;
  Tensor emb = on(random_tensor({B, 6 * C}, 800, 0.5f));
  auto c = emb.chunk(6, 1);  // [B, C] views with row stride 6C
  ASSERT_EQ(c[4].stride(0), 6 * C);
  Tensor xc = on(random_tensor({B, L, C}, 801));
  Tensor xs = on(random_tensor({B, C, L}, 802)).permute({0, 2, 1});  // non-contiguous x
  for (const Tensor* xp : {&xc, &xs}) {
    const Tensor& x = *xp;
    const Vec xd = to_d(x), ed = to_d(emb);
    for (const auto& chunks : {std::pair{0, 1}, std::pair{3, 4}, std::pair{5, 2}}) {
      const int si = chunks.first, ci = chunks.second;  // plain locals: clang 14 cannot capture bindings
      SCOPED_TRACE("shift chunk " + std::to_string(si) + ", scale chunk " + std::to_string(ci));
      Vec ref(size_t(B * L * C)), tol(ref.size());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t k = 0; k < C; ++k) {
            const double sh = ed[size_t(b * 6 * C + si * C + k)], sc = ed[size_t(b * 6 * C + ci * C + k)];
            const double xv = xd[size_t((b * L + l) * C + k)];
            const size_t i = size_t((b * L + l) * C + k);
            ref[i] = xv * (1.0 + sc) + sh;
            tol[i] = 4 * kEps32 * (std::fabs(xv) * (1.0 + std::fabs(sc)) + std::fabs(sh)) + 1e-30;
          }
      for_thread_counts([&] {
        Tensor y = ops::modulate(x, c[size_t(si)], c[size_t(ci)]);
        EXPECT_EQ(y.shape(), (Shape{B, L, C}));
        EXPECT_TRUE(close(y, ref, tol));
      });
    }
  }
}

// The fused norm + modulation must give the unfused pair's bits exactly (that is its contract: no fixture
// moves when a model switches to it): odd widths, widths beyond one CUDA block's threads, with and without
// the affine (bf16 weights as checkpoints hold them), shift / scale as strided chunks that differ per batch.
TEST_P(OpsModulate, LayerNormModulateEqualsUnfusedBitForBit) {
  const int64_t B = 2, L = 19;
  for (const int64_t C : {int64_t(24), int64_t(37), int64_t(301)}) {
    Tensor emb = on(random_tensor({B, 6 * C}, 950 + unsigned(C), 0.5f));
    auto c = emb.chunk(6, 1);  // [B, C] views with row stride 6C
    ASSERT_EQ(c[1].stride(0), 6 * C);
    // Rows with an offset and a spread, so that the mean and variance matter.
    Tensor xc = on(ops::affine(random_tensor({B, L, C}, 960 + unsigned(C), 3.0f), 1.0f, 0.75f));
    Tensor xs = on(random_tensor({B, C, L}, 970 + unsigned(C), 2.0f)).permute({0, 2, 1});  // non-contiguous x
    Tensor w = on(random_tensor({C}, 980 + unsigned(C))), b = on(random_tensor({C}, 990 + unsigned(C)));
    Tensor wb = ops::place(random_tensor({C}, 985 + unsigned(C)).to(DType::BF16), device());
    struct Affine {
      const char* name;
      const Tensor* w;
      const Tensor* b;
    };
    for (const Affine& a : {Affine{"none", nullptr, nullptr}, Affine{"w", &w, nullptr}, Affine{"w+b", &w, &b},
                            Affine{"bf16 w+b", &wb, &b}})
      for (const Tensor* xp : {&xc, &xs})
        for (const auto& chunks : {std::pair{0, 1}, std::pair{4, 3}}) {
          const int si = chunks.first, ci = chunks.second;
          SCOPED_TRACE("C=" + std::to_string(C) + " affine " + a.name + (xp == &xs ? " strided x" : "") +
                       " shift chunk " + std::to_string(si) + " scale chunk " + std::to_string(ci));
          const Tensor& x = *xp;
          const Tensor &shift = c[size_t(si)], &scale = c[size_t(ci)];
          for_thread_counts([&] {
            const std::vector<float> unfused = values(ops::modulate(ops::layer_norm(x, a.w, a.b, 1e-6f), shift, scale));
            const Tensor y = ops::layer_norm_modulate(x, a.w, a.b, 1e-6f, shift, scale);
            EXPECT_EQ(y.shape(), (Shape{B, L, C}));
            const std::vector<float> fused = values(y);
            ASSERT_EQ(fused.size(), unfused.size());
            size_t differ = 0, first = 0;
            for (size_t i = fused.size(); i-- > 0;)
              if (std::memcmp(&fused[i], &unfused[i], sizeof(float)) != 0) ++differ, first = i;
            EXPECT_EQ(differ, 0u) << "first at " << first << ": fused " << fused[first] << " unfused "
                                  << unfused[first];
          });
        }
  }
}

TEST_P(OpsModulate, AddGatedAndAdd) {
  const int64_t B = 2, L = 37, C = 24;
  Tensor emb = on(random_tensor({B, 6 * C}, 900));
  Tensor gate = emb.chunk(6, 1)[2];
  Tensor x0 = on(random_tensor({B, L, C}, 901));
  Tensor y = on(random_tensor({B, C, L}, 902)).permute({0, 2, 1});  // non-contiguous y
  const Vec xd = to_d(x0), yd = to_d(y), gd = to_d(gate);
  Vec gated(xd.size()), plain(xd.size()), tg(xd.size()), tp(xd.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t k = 0; k < C; ++k) {
        const size_t i = size_t((b * L + l) * C + k);
        const double g = gd[size_t(b * C + k)];
        gated[i] = xd[i] + g * yd[i];
        plain[i] = xd[i] + yd[i];
        tg[i] = 4 * kEps32 * (std::fabs(xd[i]) + std::fabs(g * yd[i])) + 1e-30;
        tp[i] = 4 * kEps32 * (std::fabs(xd[i]) + std::fabs(yd[i])) + 1e-30;
      }
  for_thread_counts([&] {
    Tensor x = x0.clone();
    ops::add_gated_(x, gate, y);
    EXPECT_TRUE(close(x, gated, tg));
    Tensor x2 = x0.clone();
    ops::add_(x2, y);
    EXPECT_TRUE(close(x2, plain, tp));
    Tensor s = ops::add(x0, y);
    EXPECT_TRUE(close(s, plain, tp));
    EXPECT_EQ(host_values(x0), std::vector<float>(xd.begin(), xd.end()));  // add() leaves its input alone
    // A bf16 first operand is widened by add's copy.
    Tensor xb = x0.to(DType::BF16);
    const Vec xbd = to_d(xb);
    Vec pb(xbd.size());
    for (size_t i = 0; i < pb.size(); ++i) pb[i] = xbd[i] + yd[i];
    EXPECT_TRUE(close(ops::add(xb, y), pb, tp));
  });
}

TEST_P(OpsActivation, EveryActivation) {
  std::vector<float> v;
  for (int i = 0; i <= 10000; ++i) v.push_back(-12.0f + 24.0f * float(i) / 10000.0f);
  for (float f : {0.0f, -0.0f, 1e-3f, -1e-3f, 1e-30f, 30.0f, -30.0f, 100.0f, -100.0f}) v.push_back(f);
  const int64_t n = int64_t(v.size());
  Tensor x = on(Tensor::from_f32({n}, v));
  // A strided input too: every other element of a [n, 2] tensor.
  Tensor pair = Tensor::zeros({n, 2});
  for (int64_t i = 0; i < n; ++i) pair.f32()[2 * i + 1] = v[size_t(i)];
  Tensor xs = on(pair).select(1, 1);
  for (Act act : kActs) {
    SCOPED_TRACE(act_name(act));
    Vec ref(v.size()), tol(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      ref[i] = act_ref(v[i], act);
      tol[i] = 4 * kEps32 * (std::fabs(ref[i]) + std::fabs(double(v[i]))) + 1e-30;
    }
    for_thread_counts([&] {
      Tensor y = ops::activation(x, act);
      EXPECT_EQ(y.shape(), x.shape());
      EXPECT_TRUE(close(y, ref, tol));
      EXPECT_TRUE(close(ops::activation(xs, act), ref, tol));
    });
    EXPECT_EQ(host_values(x), v);  // out of place
  }
  // Through the table: in place on a 3-D tensor.
  Tensor t = on(random_tensor({3, 5, 7}, 1000, 3.0f)).clone();
  const Vec td = to_d(t);
  backend().activation(t, Act::GeluTanh);
  Vec ref(td.size()), tol(td.size());
  for (size_t i = 0; i < td.size(); ++i) {
    ref[i] = act_ref(td[i], Act::GeluTanh);
    tol[i] = 4 * kEps32 * (std::fabs(ref[i]) + std::fabs(td[i])) + 1e-30;
  }
  EXPECT_TRUE(close(t, ref, tol));
}

// ---- softmax ---------------------------------------------------------------------------------------

void ref_softmax(const Vec& x, int64_t C, Vec* y, Vec* tol) {
  const int64_t R = int64_t(x.size()) / C;
  y->assign(x.size(), 0.0);
  tol->assign(x.size(), 1e-30);
  for (int64_t r = 0; r < R; ++r) {
    const double* xr = x.data() + r * C;
    double m = -INFINITY;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, xr[c]);
    if (m == -INFINITY) continue;  // fully masked row: zeros
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(xr[c] - m);
    for (int64_t c = 0; c < C; ++c) {
      const double p = std::exp(xr[c] - m) / s;
      const size_t i = size_t(r * C + c);
      (*y)[i] = p;
      // x - max rounded in float32 (relative to its size), exp and the normalisation.
      (*tol)[i] = p == 0 ? 0.0 : kEps32 * p * (8 + 2 * std::fabs(xr[c] - m)) + 1e-30;
    }
  }
}

TEST_P(OpsSoftmax, RowsIncludingMaskedAndLarge) {
  const int64_t R = 10, C = 300;
  Tensor x = random_tensor({R, C}, 1100, 3.0f);
  float* p = x.f32();
  for (int64_t c = 0; c < C; ++c) p[3 * C + c] = -INFINITY;                    // fully masked row
  for (int64_t c = 0; c < C; c += 3) p[5 * C + c] = -INFINITY;                 // partly masked row
  for (int64_t c = 0; c < C; ++c) p[7 * C + c] += 1000.0f;                     // large logits: needs the max shift
  p[8 * C + 17] = 80.0f;                                                       // one dominant entry
  for (int64_t c = 0; c < C; ++c) p[9 * C + c] = -1000.0f + 0.01f * float(c);  // large negative logits
  Vec ref, tol;
  ref_softmax(to_d(x), C, &ref, &tol);
  for_thread_counts([&] {
    Tensor y = on(x).clone();
    ops::softmax_(y);
    EXPECT_TRUE(close(y, ref, tol));
    std::vector<float> yv = host_values(y);
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(yv[size_t(3 * C + c)], 0.0f);
    for (int64_t c = 0; c < C; c += 3) ASSERT_EQ(yv[size_t(5 * C + c)], 0.0f);
  });
  // 3-D through ops (rows over the leading dims), and a single column.
  Tensor x3 = on(random_tensor({2, 3, 50}, 1101, 2.0f)).clone();
  ref_softmax(to_d(x3), 50, &ref, &tol);
  ops::softmax_(x3);
  EXPECT_TRUE(close(x3, ref, tol));
  Tensor x1 = on(random_tensor({4, 1}, 1102)).clone();
  ops::softmax_(x1);
  EXPECT_EQ(host_values(x1), (std::vector<float>{1, 1, 1, 1}));
}

// ---- attention -------------------------------------------------------------------------------------

struct AttnShape {
  int64_t B, Lq, Lk, H, D;
  std::string str() const {
    std::ostringstream os;
    os << "B=" << B << " Lq=" << Lq << " Lk=" << Lk << " H=" << H << " D=" << D;
    return os.str();
  }
};

// Reference softmax(q k^T * scale) v in double, and the same computed plainly in float32 (float dot products,
// std::exp, float sums), whose error against the double result sets the bar for the tiled kernel.
struct AttnRef {
  Vec out;
  double f32_err = 0;  // max |plain float32 - double|
  double vmax = 0;     // max |v|
  // The flash-attention rule: at most twice a plain float32 implementation's error (plus a hair).
  double bound() const { return 2 * f32_err + 4 * kEps32 * vmax; }
};

// mask (optional): an additive bias [B or 1, H or 1, Lq or 1, Lk] and/or causal order, as AttentionMask.
AttnRef ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                      const AttentionMask* mask = nullptr) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  const std::vector<float> qv = host_values(q), kv = host_values(k), vv = host_values(v);
  const bool has_bias = mask && mask->bias.defined(), causal = mask && mask->causal;
  const std::vector<float> bv = has_bias ? host_values(mask->bias) : std::vector<float>();
  const int64_t bias_b = has_bias ? mask->bias.size(0) : 0, bias_h = has_bias ? mask->bias.size(1) : 0;
  const int64_t bias_q = has_bias ? mask->bias.size(2) : 0;
  AttnRef r;
  r.out.assign(size_t(B * Lq * H * D), 0.0);
  for (float f : vv) r.vmax = std::max(r.vmax, double(std::fabs(f)));
  Vec s(static_cast<size_t>(Lk)), od(static_cast<size_t>(D));
  std::vector<float> sf(static_cast<size_t>(Lk)), of(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        const float* qi = qv.data() + ((b * Lq + i) * H + h) * D;
        double m = -INFINITY;
        float mf = -INFINITY;
        for (int64_t j = 0; j < Lk; ++j) {
          const float* kj = kv.data() + ((b * Lk + j) * H + h) * D;
          double d = 0;
          float df = 0;
          for (int64_t e = 0; e < D; ++e) d += double(qi[e]) * kj[e], df += qi[e] * kj[e];
          s[size_t(j)] = d * scale;
          sf[size_t(j)] = df * scale;
          if (has_bias) {
            const float bj = bv[size_t(
                (((bias_b > 1 ? b : 0) * bias_h + (bias_h > 1 ? h : 0)) * bias_q + (bias_q > 1 ? i : 0)) * Lk + j)];
            s[size_t(j)] += bj;
            sf[size_t(j)] += bj;
          }
          if (causal && j > i) s[size_t(j)] = sf[size_t(j)] = -INFINITY;
          m = std::max(m, s[size_t(j)]);
          mf = std::max(mf, sf[size_t(j)]);
        }
        if (m == -INFINITY) continue;  // every key masked: the row stays zero
        double l = 0;
        float lf = 0;
        for (int64_t j = 0; j < Lk; ++j) {
          s[size_t(j)] = std::exp(s[size_t(j)] - m);
          sf[size_t(j)] = std::exp(sf[size_t(j)] - mf);
          l += s[size_t(j)];
          lf += sf[size_t(j)];
        }
        std::fill(od.begin(), od.end(), 0.0);
        std::fill(of.begin(), of.end(), 0.0f);
        for (int64_t j = 0; j < Lk; ++j) {
          const float* vj = vv.data() + ((b * Lk + j) * H + h) * D;
          for (int64_t e = 0; e < D; ++e) od[size_t(e)] += s[size_t(j)] * vj[e], of[size_t(e)] += sf[size_t(j)] * vj[e];
        }
        double* o = r.out.data() + ((b * Lq + i) * H + h) * D;
        for (int64_t e = 0; e < D; ++e) {
          o[e] = od[size_t(e)] / l;
          r.f32_err = std::max(r.f32_err, std::fabs(double(of[size_t(e)] / lf) - o[e]));
        }
      }
  return r;
}

::testing::AssertionResult attention_close(const Tensor& out, const AttnRef& r) {
  return all_close(host_values(out), r.out, Vec(r.out.size(), r.bound()));
}

// q [B, Lq, H, D] and k, v [B, Lk, H, D] as strided views into packed projections: q is the middle third
// of a [B, Lq, 3*H*D] tensor, k and v the first and last thirds of a [B, Lk, 3*H*D] one (the same tensor
// when Lq == Lk, as a fused qkv projection gives).
struct QKV {
  Tensor qkv_q, qkv_kv, q, k, v;
};

QKV make_qkv(const AttnShape& s, unsigned seed, Device dev) {
  QKV t;
  t.qkv_q = ops::to_device(random_tensor({s.B, s.Lq, 3 * s.H * s.D}, seed, 1.5f), dev);
  t.qkv_kv =
      s.Lq == s.Lk ? t.qkv_q : ops::to_device(random_tensor({s.B, s.Lk, 3 * s.H * s.D}, seed + 1, 1.5f), dev);
  t.q = t.qkv_q.reshape({s.B, s.Lq, 3, s.H, s.D}).select(2, 1);
  auto kv = t.qkv_kv.reshape({s.B, s.Lk, 3 * s.H, s.D}).chunk(3, 2);
  t.k = kv[0];
  t.v = kv[2];
  return t;
}

TEST_P(OpsAttention, MatchesNaiveSoftmaxAttention) {
  const AttnShape shapes[] = {
      {1, 1, 1, 1, 8},      {2, 63, 65, 3, 16}, {1, 65, 300, 2, 32}, {2, 300, 63, 2, 8},   {1, 64, 256, 1, 16},
      {1, 129, 513, 2, 24}, {2, 1, 300, 3, 5},  {1, 70, 1, 2, 16},   {2, 100, 100, 4, 12},
  };
  unsigned seed = 1200;
  for (const auto& s : shapes) {
    SCOPED_TRACE(s.str());
    QKV t = make_qkv(s, seed += 2, device());
    ASSERT_EQ(t.q.shape(), (Shape{s.B, s.Lq, s.H, s.D}));
    ASSERT_EQ(t.k.shape(), (Shape{s.B, s.Lk, s.H, s.D}));
    ASSERT_EQ(t.q.stride(1), 3 * s.H * s.D);
    const float scale = 1.0f / std::sqrt(float(s.D));
    const AttnRef r = ref_attention(t.q, t.k, t.v, scale);
    for_thread_counts([&] {
      Tensor o = ops::attention(t.q, t.k, t.v, scale);
      EXPECT_EQ(o.shape(), t.q.shape());
      EXPECT_EQ(o.device(), device());
      EXPECT_TRUE(attention_close(o, r)) << "f32 reference error " << r.f32_err;
    });
    // The same inputs packed contiguously.
    Tensor o = ops::attention(t.q.contiguous(), t.k.contiguous(), t.v.contiguous(), scale);
    EXPECT_TRUE(attention_close(o, r));
  }
}

TEST_P(OpsAttention, PeakedScoresAndOtherScales) {
  // Large logits (scale 1) make nearly one-hot rows, exercising the running-max rescale.
  const AttnShape s{1, 40, 600, 2, 16};
  QKV t = make_qkv(s, 1300, device());
  for (float scale : {1.0f, 0.01f}) {
    SCOPED_TRACE("scale " + std::to_string(scale));
    const AttnRef r = ref_attention(t.q, t.k, t.v, scale);
    EXPECT_TRUE(attention_close(ops::attention(t.q, t.k, t.v, scale), r)) << "f32 reference error " << r.f32_err;
  }
}

// An additive bias broadcast over batch, heads and/or queries (T5's relative positions, key padding as -inf,
// Qwen-Image's text key mask), causal order, both together, and a query row whose every key is masked (zeros,
// as the kernel promises); with Lk > 256 the bias is read across key blocks.
TEST_P(OpsAttention, MaskBiasAndCausal) {
  struct Case {
    AttnShape s;
    Shape bias;  // empty: none
    bool causal;
  };
  const Case cases[] = {
      {{2, 70, 70, 3, 8}, {1, 1, 70, 70}, false}, {{2, 70, 70, 3, 8}, {2, 1, 70, 70}, true},
      {{2, 70, 70, 3, 8}, {1, 3, 70, 70}, false}, {{2, 70, 70, 3, 8}, {2, 3, 70, 70}, true},
      {{2, 70, 70, 3, 8}, {}, true},              {{1, 40, 300, 2, 16}, {1, 1, 40, 300}, false},
      {{2, 300, 300, 1, 8}, {}, true},           {{2, 70, 70, 3, 8}, {2, 1, 1, 70}, false},
      {{2, 300, 300, 2, 8}, {2, 2, 1, 300}, true},
  };
  unsigned seed = 1350;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.s.str() + " bias " + shape_str(c.bias) + (c.causal ? " causal" : ""));
    QKV t = make_qkv(c.s, seed += 3, device());
    const float scale = 1.0f / std::sqrt(float(c.s.D));
    AttentionMask mask;
    mask.causal = c.causal;
    if (!c.bias.empty()) {
      Tensor bias = random_tensor(c.bias, seed + 2, 2.0f);
      float* p = bias.f32();
      const int64_t rows = c.bias[0] * c.bias[1], Lq = c.bias[2], Lk = c.bias[3];
      // Key padding: the last 9 keys of the last bias slice; and query row 5 of it sees no key at all.
      for (int64_t i = 0; i < Lq; ++i)
        for (int64_t j = Lk - 9; j < Lk; ++j) p[((rows - 1) * Lq + i) * Lk + j] = -INFINITY;
      if (Lq > 5)
        for (int64_t j = 0; j < Lk; ++j) p[((rows - 1) * Lq + 5) * Lk + j] = -INFINITY;
      mask.bias = on(bias);
    }
    const AttnRef r = ref_attention(t.q, t.k, t.v, scale, &mask);
    for_thread_counts([&] {
      const Tensor o = ops::attention(t.q, t.k, t.v, scale, &mask);
      EXPECT_EQ(o.device(), device());
      EXPECT_TRUE(attention_close(o, r)) << "f32 reference error " << r.f32_err;
    });
  }
}

// Ring attention merges K/V chunks one at a time into one state; the result must not depend on how the keys
// were split or in which order the chunks arrive.
TEST_P(OpsAttention, ChunkedAccumulateEqualsOneCall) {
  const int64_t B = 2, Lq = 70, Lk = 300, H = 2, D = 16;
  const float scale = 1.0f / std::sqrt(float(D));
  Tensor qkv = on(random_tensor({B, Lq, 3 * H * D}, 1400, 1.5f));
  Tensor q = qkv.reshape({B, Lq, 3, H, D}).select(2, 0);
  const std::vector<std::vector<int64_t>> splits = {{0, 100, 300}, {0, 1, 300},       {0, 256, 300},
                                                    {0, 299, 300}, {0, 90, 180, 300}, {0, 150, 300}};
  unsigned seed = 1410;
  for (const auto& cuts : splits) {
    for (bool reversed : {false, true}) {
      std::ostringstream name;
      for (auto c : cuts) name << c << " ";
      SCOPED_TRACE("cuts " + name.str() + (reversed ? "reversed" : ""));
      // Separate K/V buffers per chunk (as they arrive from peers), strided views into packed [k|v] rows;
      // the later chunks get larger keys so the running max moves between chunks.
      std::vector<Tensor> ks, vs;
      for (size_t c = 0; c + 1 < cuts.size(); ++c) {
        const int64_t n = cuts[c + 1] - cuts[c];
        Tensor kv = on(random_tensor({B, n, 2 * H * D}, ++seed, 1.0f + float(c)));
        auto parts = kv.reshape({B, n, 2, H, D});
        ks.push_back(parts.select(2, 0));
        vs.push_back(parts.select(2, 1));
      }
      Tensor k = concat(ks, 1), v = concat(vs, 1);
      ASSERT_EQ(k.size(1), Lk);
      const AttnRef r = ref_attention(q, k, v, scale);
      for_thread_counts([&] {
        const Tensor one = ops::attention(q, k, v, scale);
        EXPECT_TRUE(attention_close(one, r));
        AttentionState st = ops::attention_begin(q);
        EXPECT_EQ(st.acc.device(), device());
        EXPECT_EQ(st.max.device(), device());
        EXPECT_EQ(st.sum.device(), device());
        EXPECT_EQ(st.acc.shape(), (Shape{B, Lq, H, D}));
        EXPECT_EQ(st.max.shape(), (Shape{B, H, Lq}));
        EXPECT_EQ(st.sum.shape(), (Shape{B, H, Lq}));
        for (size_t i = 0; i < ks.size(); ++i) {
          const size_t c = reversed ? ks.size() - 1 - i : i;
          ops::attention_accumulate(q, ks[c], vs[c], scale, st);
        }
        const Tensor merged = ops::attention_end(st);
        EXPECT_EQ(merged.shape(), q.shape());
        EXPECT_TRUE(attention_close(merged, r)) << "f32 reference error " << r.f32_err;
        // Equal to the single call up to float32 rounding of the different blocking.
        EXPECT_TRUE(close(merged, to_d(one), Vec(r.out.size(), r.bound())));
        // The state's running max/sum match the reference row statistics of the concatenated keys.
        std::vector<float> mx = host_values(st.max), sm = host_values(st.sum);
        const std::vector<float> qv = host_values(q), kv = host_values(k);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < Lq; i += 13) {
              double m = -INFINITY;
              Vec sc(static_cast<size_t>(Lk));
              for (int64_t j = 0; j < Lk; ++j) {
                double d = 0;
                for (int64_t e = 0; e < D; ++e)
                  d += double(qv[size_t(((b * Lq + i) * H + h) * D + e)]) * kv[size_t(((b * Lk + j) * H + h) * D + e)];
                sc[size_t(j)] = d * scale;
                m = std::max(m, sc[size_t(j)]);
              }
              double l = 0;
              for (double x : sc) l += std::exp(x - m);
              const size_t si = size_t((b * H + h) * Lq + i);
              EXPECT_NEAR(mx[si], m, 1e-5 * (1 + std::fabs(m)));
              EXPECT_NEAR(sm[si], l, 1e-5 * l);
            }
      });
    }
  }
}

TEST_P(OpsAttention, EmptyStateFinalizesToZero) {
  // No keys merged yet: sum is 0 and the output is zeros, not NaN.
  Tensor q = on(random_tensor({1, 3, 2, 4}, 1500));
  AttentionState st = ops::attention_begin(q);
  for (float f : host_values(st.max)) EXPECT_EQ(f, -INFINITY);
  for (float f : host_values(st.sum)) EXPECT_EQ(f, 0.0f);
  Tensor out = ops::attention_end(st);
  EXPECT_EQ(out.device(), device());
  for (float f : host_values(out)) EXPECT_EQ(f, 0.0f);
}

// ---- rope ------------------------------------------------------------------------------------------

TEST_P(OpsRope, InterleavedPairs) {
  const int64_t B = 2, L = 40, H = 3, D = 8;
  Tensor x0 = on(random_tensor({B, L, H, D}, 1600));
  // Arbitrary (not trigonometric) tables so that every index choice shows; given as strided views.
  Tensor tables = on(random_tensor({L, 2 * D}, 1601));
  Tensor cos = tables.slice(1, 0, D), sin = tables.slice(1, D, 2 * D);
  ASSERT_FALSE(cos.is_contiguous());
  const Vec xd = to_d(x0), cd = to_d(cos), sd = to_d(sin);
  Vec ref(xd.size()), tol(xd.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          const size_t base = size_t(((b * L + l) * H + h) * D);
          const double a = xd[base + 2 * i], c = xd[base + 2 * i + 1];
          const double c0 = cd[size_t(l * D + 2 * i)], c1 = cd[size_t(l * D + 2 * i + 1)];
          const double s0 = sd[size_t(l * D + 2 * i)], s1 = sd[size_t(l * D + 2 * i + 1)];
          ref[base + 2 * i] = a * c0 - c * s0;
          ref[base + 2 * i + 1] = c * c1 + a * s1;
          tol[base + 2 * i] = 4 * kEps32 * (std::fabs(a * c0) + std::fabs(c * s0)) + 1e-30;
          tol[base + 2 * i + 1] = 4 * kEps32 * (std::fabs(c * c1) + std::fabs(a * s1)) + 1e-30;
        }
  for_thread_counts([&] {
    Tensor x = x0.clone();
    ops::rope_(x, cos, sin);
    EXPECT_TRUE(close(x, ref, tol));
  });
  // A true rotation keeps each pair's norm.
  Tensor ct = Tensor::empty({L, D}), st = Tensor::empty({L, D});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double th = double(l) * std::pow(10000.0, -2.0 * double(i) / double(D));
      ct.f32()[l * D + 2 * i] = ct.f32()[l * D + 2 * i + 1] = float(std::cos(th));
      st.f32()[l * D + 2 * i] = st.f32()[l * D + 2 * i + 1] = float(std::sin(th));
    }
  Tensor x = x0.clone();
  ops::rope_(x, on(ct), on(st));
  const std::vector<float> xv = host_values(x);
  for (size_t i = 0; i < xv.size(); i += 2) {
    const double n0 = std::hypot(xd[i], xd[i + 1]), n1 = std::hypot(double(xv[i]), double(xv[i + 1]));
    ASSERT_NEAR(n1, n0, 1e-5 * (1 + n0)) << i;
  }
}

// ---- timestep embedding -------------------------------------------------------------------------------

// diffusers.models.embeddings.get_timestep_embedding, step by step in float32 as torch does it:
// exponent = -ln(max_period) * arange(half) / (half - shift); emb = t[:, None] * exp(exponent);
// emb = scale * emb; [sin, cos] (flipped to [cos, sin]); zero-padded when dim is odd.
std::vector<float> ref_timestep_f32(const std::vector<float>& t, int dim, bool flip, float shift, float scale,
                                    float max_period) {
  const int half = dim / 2;
  std::vector<float> out(t.size() * size_t(dim), 0.0f);
  const float neg_log = float(-std::log(double(max_period)));  // a python float, cast to the tensor's float32
  const float denom = float(double(half) - double(shift));
  for (size_t b = 0; b < t.size(); ++b)
    for (int i = 0; i < half; ++i) {
      float e = neg_log * float(i);
      e = e / denom;
      float arg = t[b] * std::exp(e);
      arg = scale * arg;
      out[b * size_t(dim) + size_t(i)] = flip ? std::cos(arg) : std::sin(arg);
      out[b * size_t(dim) + size_t(half + i)] = flip ? std::sin(arg) : std::cos(arg);
    }
  return out;
}

TEST_P(OpsTimestep, MatchesDiffusersFormula) {
  const std::vector<float> ts = {0.0f, 1.0f, 999.0f, 500.5f, 0.25f, 37.0f};
  Tensor t = on(Tensor::from_f32({int64_t(ts.size())}, ts));
  struct Case {
    int dim;
    bool flip;
    float shift, scale, max_period;
  };
  const Case cases[] = {{256, true, 0.0f, 1.0f, 10000.0f},  {256, false, 1.0f, 1.0f, 10000.0f},
                        {320, false, 1.0f, 1.0f, 10000.0f}, {33, true, 1.0f, 1000.0f, 10000.0f},
                        {7, false, 0.0f, 1.0f, 10000.0f},   {7, true, 0.5f, 1.0f, 5000.0f},
                        {1, true, 0.0f, 1.0f, 10000.0f}};
  for (const auto& c : cases) {
    SCOPED_TRACE("dim=" + std::to_string(c.dim) + " flip=" + std::to_string(c.flip) +
                 " shift=" + std::to_string(c.shift) + " scale=" + std::to_string(c.scale));
    const Tensor e = ops::timestep_embedding(t, c.dim, c.flip, c.shift, c.scale, c.max_period);
    ASSERT_EQ(e.shape(), (Shape{int64_t(ts.size()), c.dim}));
    ASSERT_EQ(e.device(), device());
    const std::vector<float> got = host_values(e);
    // 1) The float32 recipe, to within float32 rounding of values in [-1, 1].
    const std::vector<float> want = ref_timestep_f32(ts, c.dim, c.flip, c.shift, c.scale, c.max_period);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2 * kEps32) << i;
    // 2) The exact formula in double, to within the float32 rounding of the argument (its exp amplifies the
    //    exponent's rounding by up to ln(max_period)).
    const int half = c.dim / 2;
    for (size_t b = 0; b < ts.size(); ++b) {
      for (int i = 0; i < half; ++i) {
        const double arg =
            double(c.scale) * ts[b] * std::exp(-std::log(double(c.max_period)) * i / (double(half) - double(c.shift)));
        const double tol = 1e-6 + 32 * kEps32 * std::fabs(arg);
        const double first = c.flip ? std::cos(arg) : std::sin(arg), second = c.flip ? std::sin(arg) : std::cos(arg);
        EXPECT_NEAR(got[b * size_t(c.dim) + size_t(i)], first, tol);
        EXPECT_NEAR(got[b * size_t(c.dim) + size_t(half + i)], second, tol);
      }
      if (c.dim % 2) {
        EXPECT_EQ(got[b * size_t(c.dim) + size_t(c.dim - 1)], 0.0f);  // zero pad
      }
    }
  }
  // Integer timesteps (as diffusers schedulers pass them) embed like their float values.
  Tensor ti = Tensor::empty({3}, DType::I64);
  const int64_t iv[3] = {0, 7, 999};
  std::memcpy(ti.raw(), iv, sizeof(iv));
  EXPECT_EQ(host_values(ops::timestep_embedding(on(ti), 64, true, 0.0f)),
            ref_timestep_f32({0.0f, 7.0f, 999.0f}, 64, true, 0.0f, 1.0f, 10000.0f));
}

// ---- patchify -------------------------------------------------------------------------------------

TEST_P(OpsPatchify, MatchesNaiveLayout) {
  const int64_t B = 2, C = 3, H = 8, W = 12;
  Tensor x = on(random_tensor({B, C, H, W}, 1700));
  const Vec xd = to_d(x);
  for (int p : {1, 2, 4}) {
    SCOPED_TRACE("p=" + std::to_string(p));
    const int64_t h = H / p, w = W / p;
    Tensor P = ops::patchify(x, p);
    ASSERT_EQ(P.shape(), (Shape{B, h * w, C * p * p}));
    ASSERT_EQ(P.device(), device());
    const std::vector<float> pv = host_values(P);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t u = 0; u < p; ++u)
              for (int64_t v = 0; v < p; ++v)
                ASSERT_EQ(double(pv[size_t((b * h * w + i * w + j) * C * p * p + (c * p + u) * p + v)]),
                          xd[size_t(((b * C + c) * H + i * p + u) * W + j * p + v)]);
  }
  // A non-contiguous input gives the same patches as its contiguous copy.
  Tensor xt = on(random_tensor({B, C, W, H}, 1701)).permute({0, 1, 3, 2});
  EXPECT_EQ(host_values(ops::patchify(xt, 2)), host_values(ops::patchify(xt.contiguous(), 2)));
}

TEST_P(OpsPatchify, LinearOnPatchesIsStridedConv) {
  const int64_t B = 2, C = 4, H = 6, W = 10, O = 5;
  const int p = 2;
  const int64_t h = H / p, w = W / p, K = C * p * p;
  Tensor x = on(random_tensor({B, C, H, W}, 1800));
  Tensor weight = ops::place(random_tensor({O, C, p, p}, 1801, 0.3f), device());
  Tensor bias = ops::place(random_tensor({O}, 1802), device());
  const Vec xd = to_d(x), wd = to_d(weight), bd = to_d(bias);
  Vec ref(size_t(B * h * w * O)), tol(ref.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) {
          double s = bd[size_t(o)], mag = std::fabs(bd[size_t(o)]);
          for (int64_t c = 0; c < C; ++c)
            for (int64_t u = 0; u < p; ++u)
              for (int64_t v = 0; v < p; ++v) {
                const double t = wd[size_t(((o * C + c) * p + u) * p + v)] *
                                 xd[size_t(((b * C + c) * H + i * p + u) * W + j * p + v)];
                s += t;
                mag += std::fabs(t);
              }
          const size_t at = size_t((b * h * w + i * w + j) * O + o);  // [B, h*w, O]
          ref[at] = s;
          tol[at] = 12 * kEps32 * mag + 1e-30;
        }
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor wk = weight.reshape({O, K}).to(dt);
    if (dt == DType::BF16) {  // the reference must use the stored bf16 weights
      const Vec wb = to_d(wk);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t o = 0; o < O; ++o)
          for (int64_t i = 0; i < h * w; ++i) {
            double s = bd[size_t(o)];
            for (int64_t kk = 0; kk < K; ++kk) {
              const int64_t c = kk / (p * p), u = (kk / p) % p, v = kk % p;
              s += wb[size_t(o * K + kk)] * xd[size_t(((b * C + c) * H + (i / w) * p + u) * W + (i % w) * p + v)];
            }
            ref[size_t((b * h * w + i) * O + o)] = s;
          }
    }
    Tensor y = ops::linear(ops::patchify(x, p), wk, &bias);
    ASSERT_EQ(y.shape(), (Shape{B, h * w, O}));
    EXPECT_TRUE(close(y, ref, tol));
  }
}

TEST_P(OpsPatchify, UnpatchifyLayoutAndRoundTrip) {
  const int64_t B = 2, C = 3, h = 3, w = 4;
  const int p = 2;
  // unpatchify against the naive "nhwpqc" layout.
  Tensor in = on(random_tensor({B, h * w, p * p * C}, 1900));
  Tensor out = ops::unpatchify(in, h, w, p, C);
  ASSERT_EQ(out.shape(), (Shape{B, C, h * p, w * p}));
  ASSERT_EQ(out.device(), device());
  const std::vector<float> iv = host_values(in), ov = host_values(out);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          for (int64_t u = 0; u < p; ++u)
            for (int64_t v = 0; v < p; ++v)
              ASSERT_EQ(ov[size_t(((b * C + c) * h * p + i * p + u) * w * p + j * p + v)],
                        iv[size_t((b * h * w + i * w + j) * p * p * C + (u * p + v) * C + c)]);

  // Round trip: patchify is channel-major inside a patch, unpatchify channel-minor; reorder in between.
  for (int64_t ch : {int64_t(1), C}) {
    SCOPED_TRACE("channels=" + std::to_string(ch));
    Tensor x = on(random_tensor({B, ch, h * p, w * p}, 1901 + unsigned(ch)));
    Tensor P = ops::patchify(x, p);  // [B, hw, C*p*p]
    Tensor Pm = P.reshape({B, h * w, ch, p, p}).permute({0, 1, 3, 4, 2}).contiguous().reshape({B, h * w, p * p * ch});
    EXPECT_EQ(host_values(ops::unpatchify(Pm, h, w, p, ch)), host_values(x));
    if (ch == 1) {
      EXPECT_EQ(host_values(ops::unpatchify(P, h, w, p, 1)), host_values(x));
    }
    // And the other way: unpatchify then patchify recovers the channel-major patches.
    EXPECT_EQ(host_values(ops::patchify(ops::unpatchify(Pm, h, w, p, ch), p)), host_values(P));
  }
}

}  // namespace
