// The kernels for model code (backend/model_ops.h) on every compiled backend (backend_test_util.h), against
// plain double-precision loops written here. The ones that replace host loops whose float32 rounding the
// fixtures pin down (RoPE tables, GroupNorm moments, the Euler step's axpby) are checked bit for bit against
// that rounding, so a device backend must reproduce it, not merely come close.
#include "backend/model_ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../test_util.h"
#include "backend_test_util.h"
#include "core/tensor.h"

using namespace meshdit;

namespace {

using test::kEps32;
using test::random_tensor;

MESHDIT_BACKEND_SUITE(ModelOpsRope);
MESHDIT_BACKEND_SUITE(ModelOpsMoments);
MESHDIT_BACKEND_SUITE(ModelOpsBlend);
MESHDIT_BACKEND_SUITE(ModelOpsGatherBias);
MESHDIT_BACKEND_SUITE(ModelOpsMaskToBias);
MESHDIT_BACKEND_SUITE(ModelOpsRows);
MESHDIT_BACKEND_SUITE(ModelOpsAxpby);
MESHDIT_BACKEND_SUITE(ModelOpsRowStats);
MESHDIT_BACKEND_SUITE(ModelOpsL1Change);

// a * b rounded once to float32: the product of two floats is exact in double.
float mul32(float a, float b) { return float(double(a) * double(b)); }
// a + b rounded once to float32, without a fused multiply-add in sight (volatile keeps the operands).
float add32(float a, float b) {
  volatile float x = a, y = b;
  return x + y;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

TEST_P(ModelOpsRope, TablesMatchFloat64Frequencies) {
  const std::vector<int> axes{4, 6, 2};
  const double theta = 10000.0;
  const int64_t L = 7, D = 12;
  std::vector<float> pos;
  for (int64_t l = 0; l < L; ++l)
    for (size_t a = 0; a < axes.size(); ++a) pos.push_back(float(l * 3 + int64_t(a)) - 4.5f + 0.25f * float(l));
  auto [cos, sin] = ops::rope_tables(on(Tensor::from_f32({L, 3}, pos)), axes, theta);
  ASSERT_EQ(cos.shape(), (Shape{L, D}));
  ASSERT_EQ(sin.shape(), (Shape{L, D}));
  const std::vector<float> c = values(cos), s = values(sin);
  for (int64_t l = 0; l < L; ++l) {
    int64_t col = 0;
    for (size_t a = 0; a < axes.size(); ++a)
      for (int i = 0; i < axes[a] / 2; ++i, col += 2) {
        const double angle = double(pos[size_t(l * 3) + a]) * std::pow(theta, -double(2 * i) / double(axes[a]));
        for (int64_t k = col; k < col + 2; ++k) {
          EXPECT_NEAR(c[size_t(l * D + k)], std::cos(angle), kEps32) << "l " << l << " col " << k;
          EXPECT_NEAR(s[size_t(l * D + k)], std::sin(angle), kEps32) << "l " << l << " col " << k;
        }
      }
  }
}

TEST_P(ModelOpsRope, PositionsInAnyFloatDtype) {
  const Tensor pos = on(Tensor::from_f32({2, 1}, {3.0f, -1.0f}));
  auto [c32, s32] = ops::rope_tables(pos, {4}, 256.0);
  auto [c16, s16] = ops::rope_tables(pos.to(DType::BF16), {4}, 256.0);
  EXPECT_EQ(values(c32), values(c16));
  EXPECT_EQ(values(s32), values(s16));
}

TEST_P(ModelOpsRope, HalvesRotatedAgainstRotateHalf) {
  // Llama / Qwen: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]), frequency i in
  // both dimension i and i + D/2.
  const int64_t B = 2, L = 5, H = 3, D = 8;
  std::vector<float> pos;
  for (int64_t l = 0; l < L; ++l) pos.push_back(float(l) * 1.5f - 2.0f);
  auto [cos, sin] = ops::rope_tables(on(Tensor::from_f32({L, 1}, pos)), {int(D)}, 1000.0);
  const Tensor x0 = random_tensor({B, L, H, D}, 11);
  Tensor x = on(x0).clone();
  ops::rope_half_(x, cos, sin);
  const std::vector<float> in = x0.to_vector(), got = values(x);
  for (int64_t r = 0; r < B * L; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = d % (D / 2);
        const double angle = double(pos[size_t(r % L)]) * std::pow(1000.0, -double(2 * i) / double(D));
        const size_t at = size_t((r * H + h) * D);
        const double rot = d < D / 2 ? -double(in[at + size_t(d + D / 2)]) : double(in[at + size_t(d - D / 2)]);
        EXPECT_NEAR(got[at + size_t(d)], double(in[at + size_t(d)]) * std::cos(angle) + rot * std::sin(angle), 1e-5)
            << "row " << r << " head " << h << " dim " << d;
      }
}

TEST_P(ModelOpsMoments, MeanAndRstdInFloat64) {
  const Tensor sums = random_tensor({3, 4}, 5, 100.0f);
  std::vector<float> sv = random_tensor({3, 4}, 6, 50.0f).to_vector();
  for (auto& v : sv) v = std::fabs(v);
  const Tensor ssd = Tensor::from_f32({3, 4}, sv);
  const double count = 4.0 * 37.0 * 19.0, eps = 1e-6;
  const std::vector<float> mean = values(ops::mean_from_sums(on(sums), count));
  const std::vector<float> rstd = values(ops::rstd_from_sums(on(ssd), count, eps));
  const std::vector<float> s = sums.to_vector();
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_TRUE(same_bits(mean[i], float(double(s[i]) / count))) << i;
    EXPECT_TRUE(same_bits(rstd[i], float(1.0 / std::sqrt(double(sv[i]) / count + eps)))) << i;
  }
}

// diffusers' blend_v / blend_h in double.
std::vector<double> blend_ref(const Tensor& a, const Tensor& b, int64_t extent, int dim) {
  const std::vector<float> av = a.to_vector(), bv = b.to_vector();
  std::vector<double> out(bv.begin(), bv.end());
  const int64_t B = b.size(0), C = b.size(1), hb = b.size(2), wb = b.size(3), ha = a.size(2), wa = a.size(3);
  const int64_t e = std::min({dim == 2 ? ha : wa, dim == 2 ? hb : wb, extent});
  for (int64_t n = 0; n < B * C; ++n)
    for (int64_t y = 0; y < hb; ++y)
      for (int64_t x = 0; x < wb; ++x) {
        const int64_t k = dim == 2 ? y : x;
        if (k >= e) continue;
        const double t = double(k) / double(e);
        const double av_ =
            dim == 2 ? av[size_t((n * ha + ha - e + y) * wa + x)] : av[size_t((n * ha + y) * wa + wa - e + x)];
        out[size_t((n * hb + y) * wb + x)] = av_ * (1 - t) + double(bv[size_t((n * hb + y) * wb + x)]) * t;
      }
  return out;
}

TEST_P(ModelOpsBlend, RowsAndColumnsAgainstDiffusersFormula) {
  struct Case {
    Shape a, b;
    int64_t extent;
    int dim;
  };
  const Case cases[] = {{{2, 3, 6, 5}, {2, 3, 4, 5}, 3, 2},   // above: a taller than the extent
                        {{1, 2, 2, 5}, {1, 2, 6, 5}, 4, 2},   // a shorter than the extent
                        {{2, 3, 4, 7}, {2, 3, 4, 3}, 5, 3},   // left: b narrower than the extent
                        {{1, 1, 3, 6}, {1, 1, 3, 6}, 0, 3}};  // no overlap: b unchanged
  unsigned seed = 10;
  for (const Case& c : cases) {
    const Tensor a = random_tensor(c.a, seed++);
    const Tensor b = random_tensor(c.b, seed++);
    const std::vector<double> ref = blend_ref(a, b, c.extent, c.dim);
    // A copy: on the host backend on() is a view of b, which the reference was read from.
    Tensor bd = on(b).clone();
    ops::blend_(on(a), bd, c.extent, c.dim);
    const std::vector<float> got = values(bd);
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_NEAR(got[i], ref[i], 4 * kEps32 * (1 + std::fabs(ref[i])))
          << shape_str(c.b) << " dim " << c.dim << " at " << i;
  }
}

TEST_P(ModelOpsGatherBias, StridedBf16TableByBuckets) {
  // A column slice of a bf16 table, as T5 keeps this rank's heads of relative_attention_bias.
  const Tensor full = random_tensor({5, 4}, 20).to(DType::BF16);
  const Tensor table = on(full).slice(1, 1, 3);
  ASSERT_FALSE(table.is_contiguous());
  const int64_t Lq = 3, Lk = 4;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < Lq * Lk; ++i) ids.push_back((i * 7) % 5);
  const Tensor out = ops::gather_bias(table, on(Tensor::from_i64({Lq, Lk}, ids)));
  ASSERT_EQ(out.shape(), (Shape{1, 2, Lq, Lk}));
  const std::vector<float> f = full.to_vector(), got = values(out);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < Lq * Lk; ++i)
      EXPECT_EQ(got[size_t(h * Lq * Lk + i)], f[size_t(ids[size_t(i)] * 4 + 1 + h)]);
}

TEST_P(ModelOpsMaskToBias, IntAndFloatMasks) {
  const Tensor mi = on(Tensor::from_i64({2, 3}, {1, 1, 0, 1, 0, 0}));
  const std::vector<float> bi = values(ops::mask_to_bias(mi));
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bi, (std::vector<float>{0, 0, -inf, 0, -inf, -inf}));
  const std::vector<float> bf = values(ops::mask_to_bias(on(Tensor::from_f32({4}, {0.5f, 0.0f, -1.0f, 2.0f}))));
  EXPECT_EQ(bf, (std::vector<float>{0, -inf, -inf, 0}));
}

TEST_P(ModelOpsRows, ArgmaxFindAndGather) {
  const Tensor ids = on(Tensor::from_i64({3, 5}, {4, 9, 2, 9, 0,  //
                                                  7, 7, 7, 7, 7,  //
                                                  1, 2, 3, 4, 5}));
  const Tensor am = ops::argmax_rows(ids);
  EXPECT_EQ(am.shape(), Shape{3});
  EXPECT_EQ(am.dtype(), DType::I64);
  const Tensor fr = ops::find_rows(ids, 7, -1), fr9 = ops::find_rows(ids, 9, 4);
  EXPECT_EQ(values(am), (std::vector<float>{1, 0, 4}));    // the first maximum, as torch.argmax
  EXPECT_EQ(values(fr), (std::vector<float>{-1, 0, -1}));  // missing where the value is absent
  EXPECT_EQ(values(fr9), (std::vector<float>{1, 4, 4}));

  // Gathered at the device's own argmax result, as CLIP pools at its end-of-text token.
  const Tensor x = random_tensor({3, 5, 4}, 30);
  const Tensor rows = ops::gather_rows(on(x), am);
  ASSERT_EQ(rows.shape(), (Shape{3, 4}));
  const std::vector<float> xv = x.to_vector(), rv = values(rows);
  const int64_t at[3] = {1, 0, 4};
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t d = 0; d < 4; ++d) EXPECT_EQ(rv[size_t(b * 4 + d)], xv[size_t((b * 5 + at[b]) * 4 + d)]);
}

TEST_P(ModelOpsAxpby, EachProductRoundedThenTheSum) {
  // Big enough to take several pool tasks.
  const int64_t n = (1 << 16) + 37;
  const Tensor x = random_tensor({n}, 40, 3.0f), y = random_tensor({n}, 41, 0.5f);
  const Tensor xd = on(x), yd = on(y);
  const float a = 0.8537f, b = -0.0412f;
  const std::vector<float> xv = x.to_vector(), yv = y.to_vector();
  const std::vector<float> got = values(ops::axpby(a, xd, b, yd));
  const std::vector<float> sc = values(ops::scale(yd, b));
  const std::vector<float> euler = values(ops::axpby(1.0f, xd, b, yd));  // sample + dt * model_output
  ASSERT_EQ(got.size(), size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = size_t(i);
    ASSERT_TRUE(same_bits(got[k], add32(mul32(a, xv[k]), mul32(b, yv[k])))) << i;
    ASSERT_TRUE(same_bits(sc[k], mul32(b, yv[k]))) << i;
    ASSERT_TRUE(same_bits(euler[k], add32(xv[k], mul32(b, yv[k])))) << i;
  }
}

TEST_P(ModelOpsAxpby, ReadsOtherFloatDtypesAsFloat32) {
  const Tensor x = on(random_tensor({33}, 50)).to(DType::BF16), y = on(random_tensor({33}, 51)).to(DType::F16);
  const std::vector<float> ref = values(ops::axpby(0.5f, x.to(DType::F32), 2.0f, y.to(DType::F32)));
  EXPECT_EQ(values(ops::axpby(0.5f, x, 2.0f, y)), ref);
}

TEST_P(ModelOpsRowStats, StdNormAndRatioScaling) {
  const Tensor x = random_tensor({3, 2, 5}, 11, 2.0f), y = random_tensor({3, 2, 5}, 12);
  const Tensor xd = on(x);
  const std::vector<float> xv = x.to_vector(), yv = y.to_vector();
  const std::vector<float> sd = values(ops::row_std(xd)), l2 = values(ops::row_l2(on(y)));
  ASSERT_EQ(sd.size(), 3u);
  ASSERT_EQ(l2.size(), 3u);
  const int64_t n = 10;
  for (int64_t r = 0; r < 3; ++r) {
    double mean = 0, ssd = 0, ss = 0;
    for (int64_t i = 0; i < n; ++i) mean += xv[size_t(r * n + i)] / double(n);
    for (int64_t i = 0; i < n; ++i) ssd += std::pow(xv[size_t(r * n + i)] - mean, 2);
    for (int64_t i = 0; i < n; ++i) ss += std::pow(double(yv[size_t(r * n + i)]), 2);
    EXPECT_NEAR(sd[size_t(r)], std::sqrt(ssd / double(n - 1)), 1e-6 * std::sqrt(ssd)) << r;  // torch.std: n - 1
    EXPECT_NEAR(l2[size_t(r)], std::sqrt(ss), 1e-6 * std::sqrt(ss)) << r;
  }
  const Tensor num = on(Tensor::from_f32({3}, {1.0f, 2.0f, -3.0f})),
               den = on(Tensor::from_f32({3}, {4.0f, 0.5f, 3.0f}));
  const std::vector<float> z = values(ops::scale_rows_by_ratio(xd, num, den));
  ASSERT_EQ(z.size(), xv.size());
  const float ratio[3] = {0.25f, 4.0f, -1.0f};
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(z[size_t(r * n + i)], xv[size_t(r * n + i)] * ratio[r]);
}

// Step caching's change: over more than one fixed chunk (65,536 elements), in float64, the same on every
// backend, and readable on the host from any device.
TEST_P(ModelOpsL1Change, SumsOfAbsoluteChangeAndBase) {
  const Tensor a = random_tensor({3, 50000}, 21), b = random_tensor({3, 50000}, 22, 3.0f);
  const std::vector<float> av = a.to_vector(), bv = b.to_vector();
  double d = 0, s = 0;
  for (size_t i = 0; i < av.size(); ++i) d += std::fabs(double(av[i]) - bv[i]), s += std::fabs(double(bv[i]));
  const Tensor sums = ops::l1_change_sums(on(a), on(b));
  EXPECT_EQ(sums.device(), on(a).device());
  const std::vector<float> v = ops::host_values(sums);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0], float(d));
  EXPECT_EQ(v[1], float(s));
  EXPECT_EQ(ops::host_values(ops::l1_change_sums(on(b), on(b)))[0], 0.0f);
}

}  // namespace
