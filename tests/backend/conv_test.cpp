// The image-model kernels behind meshdit::ops (conv2d, group_norm, upsample_nearest2x), on every compiled
// backend (backend_test_util.h), checked against naive double-precision loops written here, with 1, 2 and
// 3 pool threads. Tolerances are at float32 level: for a convolution a few float32 epsilons times the sum
// of |terms| of each output; for group norm a few parts in a million of the normalised magnitude (the
// statistics are float32 sums over a group).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/ops.h"
#include "backend_test_util.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

using namespace meshdit;

namespace {

using test::for_thread_counts;
using test::host_values;
using test::kEps32;
using test::random_tensor;
using test::to_d;
using test::Vec;

MESHDIT_BACKEND_SUITE(Conv2d);
MESHDIT_BACKEND_SUITE(GroupNorm);
MESHDIT_BACKEND_SUITE(UpsampleNearest2x);
MESHDIT_BACKEND_SUITE(ConvBackend);

::testing::AssertionResult all_close_on(Device dev, const Tensor& got, const Vec& ref, const Vec& tol) {
  if (got.device() != dev)
    return ::testing::AssertionFailure() << "result on " << device_name(got.device()) << ", not " << device_name(dev);
  return test::all_close(host_values(got), ref, tol);
}

// ---- conv2d ------------------------------------------------------------------------------------------

struct ConvCase {
  int64_t B, C, H, W, O, kh, kw;
  Conv2dParams p;
  DType wdtype;
  bool bias;
  std::string name;
};

struct Ref {
  Vec y, tol;
  Shape shape;
};

// y[b, o, oh, ow] = bias[o] + sum_{c, i, j} x[b, c, oh*sh - pt + i, ow*sw - pl + j] w[o, c, i, j], zero outside.
Ref ref_conv(const Vec& x, const Vec& w, const Vec* bias, const ConvCase& cc) {
  const Conv2dParams& p = cc.p;
  const int64_t Ho = (cc.H + p.pad_top + p.pad_bottom - cc.kh) / p.stride_h + 1;
  const int64_t Wo = (cc.W + p.pad_left + p.pad_right - cc.kw) / p.stride_w + 1;
  Ref r;
  r.shape = {cc.B, cc.O, Ho, Wo};
  r.y.assign(size_t(cc.B * cc.O * Ho * Wo), 0.0);
  r.tol.assign(r.y.size(), 0.0);
  for (int64_t b = 0; b < cc.B; ++b)
    for (int64_t o = 0; o < cc.O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double s = bias ? (*bias)[size_t(o)] : 0.0, mag = std::fabs(s);
          for (int64_t c = 0; c < cc.C; ++c)
            for (int64_t i = 0; i < cc.kh; ++i)
              for (int64_t j = 0; j < cc.kw; ++j) {
                const int64_t ih = oh * p.stride_h - p.pad_top + i, iw = ow * p.stride_w - p.pad_left + j;
                if (ih < 0 || ih >= cc.H || iw < 0 || iw >= cc.W) continue;
                const double t = x[size_t(((b * cc.C + c) * cc.H + ih) * cc.W + iw)] *
                                 w[size_t(((o * cc.C + c) * cc.kh + i) * cc.kw + j)];
                s += t;
                mag += std::fabs(t);
              }
          const size_t k = size_t(((b * cc.O + o) * Ho + oh) * Wo + ow);
          r.y[k] = s;
          r.tol[k] = 32 * kEps32 * mag + 1e-30;
        }
  return r;
}

Conv2dParams pads(int s, int top, int left, int bottom, int right) {
  Conv2dParams p;
  p.stride_h = p.stride_w = s;
  p.pad_top = top, p.pad_left = left, p.pad_bottom = bottom, p.pad_right = right;
  return p;
}

void check_conv(const ConvCase& cc, Device dev) {
  SCOPED_TRACE(cc.name);
  const Tensor x = ops::to_device(random_tensor({cc.B, cc.C, cc.H, cc.W}, 11), dev);
  const Tensor w = ops::place(random_tensor({cc.O, cc.C, cc.kh, cc.kw}, 12, 0.3f).to(cc.wdtype), dev);
  const Tensor b = ops::place(random_tensor({cc.O}, 13).to(cc.wdtype), dev);
  const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);  // the stored (rounded) values
  const Ref r = ref_conv(xd, wd, cc.bias ? &bd : nullptr, cc);
  for_thread_counts([&] {
    Tensor y = ops::conv2d(x, w, cc.bias ? &b : nullptr, cc.p);
    ASSERT_EQ(y.shape(), r.shape);
    EXPECT_TRUE(all_close_on(dev, y, r.y, r.tol));
  });
}

TEST_P(Conv2d, MatchesNaiveLoops) {
  const ConvCase cases[] = {
      {2, 3, 5, 7, 4, 3, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "3x3 stride 1 pad 1, odd sizes"},
      {1, 5, 9, 11, 6, 3, 3, pads(2, 0, 0, 1, 1), DType::F32, true, "3x3 stride 2, Downsample2D pad (0,1,0,1)"},
      {2, 4, 8, 10, 5, 3, 3, pads(2, 1, 1, 1, 1), DType::F32, false, "3x3 stride 2 pad 1"},
      {1, 6, 7, 9, 3, 3, 3, pads(1, 0, 0, 0, 0), DType::F32, true, "3x3 no padding"},
      {2, 7, 6, 5, 9, 1, 1, pads(1, 0, 0, 0, 0), DType::F32, true, "1x1 (no im2col)"},
      {1, 7, 6, 5, 9, 1, 1, pads(1, 0, 0, 0, 0), DType::F32, false, "1x1 without bias"},
      {1, 4, 9, 7, 3, 1, 1, pads(2, 0, 0, 0, 0), DType::F32, true, "1x1 stride 2"},
      {1, 3, 6, 8, 4, 2, 3, pads(1, 1, 2, 0, 1), DType::F32, true, "2x3 kernel, asymmetric padding"},
      {1, 2, 4, 4, 3, 3, 3, pads(1, 2, 2, 2, 2), DType::F32, true, "padding wider than the kernel reach"},
      // Row bands of an image split over ranks: the halo rows replace the padding at internal edges.
      {1, 3, 6, 8, 4, 3, 3, pads(1, 0, 1, 1, 1), DType::F32, true, "band: halo above, padding below"},
      {2, 3, 5, 7, 4, 3, 3, pads(1, 1, 1, 0, 1), DType::F32, true, "band: padding above, halo below"},
      {1, 4, 3, 9, 5, 3, 3, pads(1, 0, 1, 0, 1), DType::F32, true, "band: halos on both sides"},
      {2, 6, 7, 13, 5, 3, 3, pads(1, 1, 1, 1, 1), DType::BF16, true, "bf16 weights and bias"},
      {1, 6, 11, 6, 5, 3, 3, pads(2, 0, 0, 1, 1), DType::F16, true, "f16 weights, stride 2"},
      // Large enough to be split into pixel tiles and channel blocks across threads.
      {1, 32, 37, 41, 48, 3, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "threaded, odd image"},
      {2, 16, 20, 23, 40, 3, 3, pads(2, 0, 0, 1, 1), DType::BF16, true, "threaded stride 2, bf16"},
      {1, 64, 3, 5, 96, 3, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "few pixels, many channels"},
      // On CUDA symmetric padding runs through cuDNN: batches above 2, channel counts off multiples of 8.
      {3, 12, 9, 10, 10, 3, 3, pads(1, 1, 1, 1, 1), DType::BF16, false, "batch 3, 12 channels, no bias"},
      {2, 20, 12, 9, 16, 3, 3, pads(2, 1, 1, 1, 1), DType::F32, true, "stride 2 pad 1, 20 channels"},
      // K = 2304: with one thread the im2col budget caps a tile at 455 of the 2304 pixels (six tiles, the
      // last partial); with more threads the tiles shrink further to feed every thread.
      {1, 256, 48, 48, 8, 3, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "bounded im2col tile"},
  };
  for (const auto& cc : cases) check_conv(cc, device());
}

TEST_P(Conv2d, StridedInputIsMadeContiguous) {
  // A channels-last buffer viewed as NCHW.
  const Tensor nhwc = on(random_tensor({1, 6, 7, 4}, 21));
  const Tensor x = nhwc.permute({0, 3, 1, 2});
  ASSERT_FALSE(x.is_contiguous());
  const Tensor w = ops::place(random_tensor({5, 4, 3, 3}, 22), device());
  const Tensor y = ops::conv2d(x, w, nullptr, pads(1, 1, 1, 1, 1));
  const Tensor y_ref = ops::conv2d(x.contiguous(), w, nullptr, pads(1, 1, 1, 1, 1));
  EXPECT_EQ(y.device(), device());
  EXPECT_EQ(host_values(y), host_values(y_ref));
}

TEST(Conv2dParams, OutputSizeFollowsTorch) {
  Conv2dParams down = pads(2, 0, 0, 1, 1);  // Downsample2D(padding=0): floor(H / 2)
  for (int64_t h : {2, 3, 8, 9, 48, 49}) EXPECT_EQ(down.out_h(h, 3), h / 2) << h;
  Conv2dParams same = pads(1, 1, 1, 1, 1);
  EXPECT_EQ(same.out_w(17, 3), 17);
}

// The convolution of a row band extended by a halo row on each inner side, with vertical padding only at
// the image's edges, is the band of the whole image's convolution (what a row-split VAE decode relies on).
TEST_P(Conv2d, HaloBandsReassembleTheWholeImage) {
  const int64_t H = 11;
  const Tensor x = on(random_tensor({2, 5, H, 9}, 25));
  const Tensor w = ops::place(random_tensor({6, 5, 3, 3}, 26, 0.3f), device());
  const Tensor b = ops::place(random_tensor({6}, 27), device());
  const std::vector<float> whole = host_values(ops::conv2d(x, w, &b, pads(1, 1, 1, 1, 1)));
  for (int64_t parts : {2, 3, 5}) {
    SCOPED_TRACE("parts=" + std::to_string(parts));
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t r0 = H * p / parts, r1 = H * (p + 1) / parts;
      const int64_t e0 = std::max<int64_t>(0, r0 - 1), e1 = std::min(H, r1 + 1);
      Conv2dParams cp = pads(1, r0 == 0 ? 1 : 0, 1, r1 == H ? 1 : 0, 1);
      const Tensor band = ops::conv2d(x.slice(2, e0, e1), w, &b, cp);
      ASSERT_EQ(band.shape(), (Shape{2, 6, r1 - r0, 9}));
      const std::vector<float> got = host_values(band);
      for (int64_t bo = 0; bo < 12; ++bo)
        for (int64_t i = r0; i < r1; ++i)
          for (int64_t j = 0; j < 9; ++j) {
            const float want = whole[size_t((bo * H + i) * 9 + j)], g = got[size_t((bo * (r1 - r0) + i - r0) * 9 + j)];
            ASSERT_NEAR(g, want, 1e-5f * (1.0f + std::fabs(want))) << "bo " << bo << " row " << i << " col " << j;
          }
    }
  }
}

// ---- group norm --------------------------------------------------------------------------------------

double silu_d(double v) { return v / (1.0 + std::exp(-v)); }

void check_group_norm(Device dev, const Shape& shape, int64_t groups, bool affine, Act act, float scale, float offset) {
  SCOPED_TRACE(shape_str(shape) + " groups " + std::to_string(groups) + (affine ? " affine" : "") +
               (act == Act::SiLU ? " silu" : ""));
  Tensor xh = random_tensor(shape, 31, scale);
  float* xp = xh.f32();
  for (int64_t i = 0; i < xh.numel(); ++i) xp[i] += offset;
  const Tensor x = ops::to_device(xh, dev);
  const Tensor w = ops::place(random_tensor({shape[1]}, 32), dev), b = ops::place(random_tensor({shape[1]}, 33), dev);
  const Vec xd = to_d(x), wd = to_d(w), bd = to_d(b);
  const int64_t B = shape[0], C = shape[1], S = x.numel() / (B * C), cg = C / groups, n = cg * S;
  const float eps = 1e-6f;
  Vec ref(xd.size()), tol(xd.size());
  for (int64_t bg = 0; bg < B * groups; ++bg) {
    const double* g = xd.data() + bg * n;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += g[i];
    mean /= double(n);
    for (int64_t i = 0; i < n; ++i) var += (g[i] - mean) * (g[i] - mean);
    var /= double(n);
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (bg % groups) * cg + i / S;
      const double z = (g[i] - mean) * rstd;
      const double wc = affine ? wd[size_t(c)] : 1.0, bc = affine ? bd[size_t(c)] : 0.0;
      const double y = z * wc + bc;
      const size_t k = size_t(bg * n + i);
      ref[k] = act == Act::SiLU ? silu_d(y) : y;
      // The float32 statistics are good to a few parts in a million of the group's spread (and of its
      // offset, which the float32 input itself carries).
      tol[k] = 4e-6 * (std::fabs(z) + 1.0 + std::fabs(mean) * rstd) * std::fabs(wc) + 8 * kEps32 * std::fabs(y);
    }
  }
  for_thread_counts([&] {
    Tensor y = ops::group_norm(x, groups, affine ? &w : nullptr, affine ? &b : nullptr, eps, act);
    ASSERT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(all_close_on(dev, y, ref, tol));
  });
}

TEST_P(GroupNorm, MatchesNaiveLoops) {
  check_group_norm(device(), {2, 8, 5, 7}, 4, true, Act::None, 1.0f, 0.0f);
  check_group_norm(device(), {2, 8, 5, 7}, 4, false, Act::None, 1.0f, 0.0f);
  check_group_norm(device(), {1, 6, 3, 11}, 3, true, Act::SiLU, 2.0f, 0.5f);
  check_group_norm(device(), {3, 4, 9}, 2, true, Act::None, 1.0f, 0.0f);  // [B, C, L], as attention's norm
  check_group_norm(device(), {1, 5, 4, 4}, 1, true, Act::None, 1.0f, 0.0f);
  check_group_norm(device(), {1, 6, 4, 4}, 6, false, Act::SiLU, 1.0f, 0.0f);  // one channel per group
  // Groups of 9216 elements: sums span several accumulation chunks; an offset tests the variance pass.
  check_group_norm(device(), {1, 8, 48, 48}, 2, true, Act::None, 3.0f, 5.0f);
  check_group_norm(device(), {2, 32, 17, 19}, 8, true, Act::SiLU, 1.0f, -1.0f);
}

TEST_P(GroupNorm, ConstantGroupIsFinite) {
  const Tensor x = ops::full({1, 4, 3, 3}, 2.5f, device());
  const Tensor b = on(Tensor::from_f32({4}, {0.1f, 0.2f, 0.3f, 0.4f})), w = on(Tensor::from_f32({4}, {1, 1, 1, 1}));
  const std::vector<float> y = host_values(ops::group_norm(x, 2, &w, &b, 1e-6f));
  for (int64_t i = 0; i < 36; ++i) EXPECT_FLOAT_EQ(y[size_t(i)], 0.1f * float(i / 9 + 1)) << i;
}

// group_sums and group_norm_apply against naive double loops, and, fed with statistics summed over row
// bands of x (as ranks of a split image do), against group_norm of the whole x.
TEST_P(GroupNorm, SumsAndApplyMatchNaiveLoops) {
  const Shape shape{2, 8, 13, 6};
  const int64_t groups = 4, B = 2, C = 8, H = 13, W = 6, S = H * W, cg = C / groups, n = cg * S;
  Tensor xh = random_tensor(shape, 51, 2.0f);
  float* xp = xh.f32();
  for (int64_t i = 0; i < xh.numel(); ++i) xp[i] += 3.0f;  // an offset makes the variance pass matter
  const Tensor x = on(xh);
  const Tensor w = ops::place(random_tensor({C}, 52), device()), b = ops::place(random_tensor({C}, 53), device());
  const Vec xd = to_d(x);
  std::vector<double> mean(size_t(B * groups)), ssd(size_t(B * groups));
  for (int64_t bg = 0; bg < B * groups; ++bg) {
    double s = 0, q = 0;
    for (int64_t i = 0; i < n; ++i) s += xd[size_t(bg * n + i)];
    mean[size_t(bg)] = s / double(n);
    for (int64_t i = 0; i < n; ++i) q += std::pow(xd[size_t(bg * n + i)] - mean[size_t(bg)], 2);
    ssd[size_t(bg)] = q;
  }
  for_thread_counts([&] {
    const std::vector<float> sums = host_values(ops::group_sums(x, groups));
    ASSERT_EQ(sums.size(), size_t(B * groups));
    std::vector<float> mf(sums.size());
    for (size_t g = 0; g < sums.size(); ++g) {
      EXPECT_NEAR(sums[g], mean[g] * double(n), 1e-6 * std::fabs(mean[g] * double(n)) + 1e-4) << g;
      mf[g] = float(mean[g]);
    }
    const Tensor m = on(Tensor::from_f32({B, groups}, mf));
    const std::vector<float> sq = host_values(ops::group_sums(x, groups, &m));
    for (size_t g = 0; g < sq.size(); ++g) EXPECT_NEAR(sq[g], ssd[g], 1e-5 * ssd[g]) << g;
  });

  // Statistics from bands [0, 4), [4, 9), [9, 13), each summed on its own, reduced, then applied per band.
  const int64_t cuts[] = {0, 4, 9, 13};
  std::vector<double> tot(size_t(B * groups)), tot_sq(size_t(B * groups));
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> s = host_values(ops::group_sums(x.slice(2, cuts[k], cuts[k + 1]), groups));
    for (size_t g = 0; g < s.size(); ++g) tot[g] += s[g];
  }
  std::vector<float> mf(tot.size()), rf(tot.size());
  for (size_t g = 0; g < tot.size(); ++g) mf[g] = float(tot[g] / double(n));
  const Tensor m = on(Tensor::from_f32({B, groups}, mf));
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> s = host_values(ops::group_sums(x.slice(2, cuts[k], cuts[k + 1]), groups, &m));
    for (size_t g = 0; g < s.size(); ++g) tot_sq[g] += s[g];
  }
  const float eps = 1e-6f;
  for (size_t g = 0; g < tot.size(); ++g) rf[g] = float(1.0 / std::sqrt(tot_sq[g] / double(n) + eps));
  const Tensor r = on(Tensor::from_f32({B, groups}, rf));
  for (Act act : {Act::None, Act::SiLU}) {
    const std::vector<float> whole = host_values(ops::group_norm(x, groups, &w, &b, eps, act));
    for (int k = 0; k < 3; ++k) {
      const int64_t r0 = cuts[k], r1 = cuts[k + 1];
      const std::vector<float> got = host_values(ops::group_norm_apply(x.slice(2, r0, r1), groups, m, r, &w, &b, act));
      for (int64_t bc = 0; bc < B * C; ++bc)
        for (int64_t i = r0; i < r1; ++i)
          for (int64_t j = 0; j < W; ++j) {
            const float want = whole[size_t((bc * H + i) * W + j)], g = got[size_t((bc * (r1 - r0) + i - r0) * W + j)];
            ASSERT_NEAR(g, want, 2e-5f * (1.0f + std::fabs(want))) << "bc " << bc << " row " << i;
          }
    }
  }
  // Without the affine: z = (x - mean) * rstd exactly as given.
  const std::vector<float> z = host_values(ops::group_norm_apply(x, groups, m, r, nullptr, nullptr));
  for (int64_t i = 0; i < x.numel(); i += 17) {
    const int64_t bg = i / n;
    EXPECT_FLOAT_EQ(z[size_t(i)], (xp[i] - mf[size_t(bg)]) * rf[size_t(bg)]) << i;
  }
}

// ---- upsample ----------------------------------------------------------------------------------------

TEST_P(UpsampleNearest2x, RepeatsEveryPixel) {
  for (const Shape& s : {Shape{2, 3, 5, 7}, Shape{1, 1, 1, 1}, Shape{1, 4, 33, 2}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = on(random_tensor(s, 41));
    const std::vector<float> xv = host_values(x);
    for_thread_counts([&] {
      const Tensor y = ops::upsample_nearest2x(x);
      ASSERT_EQ(y.shape(), (Shape{s[0], s[1], 2 * s[2], 2 * s[3]}));
      ASSERT_EQ(y.device(), device());
      const std::vector<float> yv = host_values(y);
      const int64_t H = s[2], W = s[3];
      for (int64_t bc = 0; bc < s[0] * s[1]; ++bc)
        for (int64_t i = 0; i < 2 * H; ++i)
          for (int64_t j = 0; j < 2 * W; ++j)
            ASSERT_EQ(yv[size_t((bc * 2 * H + i) * 2 * W + j)], xv[size_t((bc * H + i / 2) * W + j / 2)]);
    });
  }
}

TEST_P(ConvBackend, TableHasTheImageKernels) {
  const Backend& b = backend();
  EXPECT_NE(b.conv2d, nullptr);
  EXPECT_NE(b.group_norm, nullptr);
  EXPECT_NE(b.upsample_nearest2x, nullptr);
  EXPECT_NE(b.group_sums, nullptr);
  EXPECT_NE(b.group_norm_apply, nullptr);
}

}  // namespace
