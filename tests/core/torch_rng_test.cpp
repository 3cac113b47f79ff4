// TorchGenerator against PyTorch: bit-exact against torch.randn(4, 16, 16, 16, generator=manual_seed(42)) stored
// in the tiny_shapes_pipeline case, the published values of small torch.randn calls, and the structure of
// ATen's kernel (uniforms first, Box-Muller per 16, last 16 redrawn, scalar double path with a cached sample
// below 16 elements), rebuilt here from the generator's primitive draws.
#include "core/torch_rng.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <numbers>
#include <random>
#include <vector>

#include "../test_util.h"
#include "io/safetensors.h"

using namespace meshdit;

namespace {

std::vector<float> randn_vec(int64_t n, uint64_t seed) {
  Tensor t = torch_randn({n}, seed);
  return std::vector<float>(t.f32(), t.f32() + n);
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

std::string latents_file() {
  std::string p = test::fixtures_dir() + "/tiny_shapes_pipeline/outputs_and_inputs.safetensors";
  if (!std::filesystem::exists(p))
    p = test::repo_dir() + "/tests/fixtures/tiny_shapes_pipeline/outputs_and_inputs.safetensors";
  return p;
}

TEST(TorchRng, EngineIsMt19937OnTheLow32BitsOfTheSeed) {
  for (uint64_t seed : {uint64_t(0), uint64_t(42), uint64_t(5489), uint64_t(4294967295u)}) {
    TorchMt19937 a(seed);
    std::mt19937 b(static_cast<uint32_t>(seed));
    for (int i = 0; i < 2000; ++i) ASSERT_EQ(a(), b()) << "seed " << seed << " draw " << i;  // crosses 3 refills
  }
  TorchMt19937 wide((uint64_t(7) << 32) | 42), narrow(42);
  EXPECT_EQ(wide.seed(), (uint64_t(7) << 32) | 42);
  for (int i = 0; i < 700; ++i) ASSERT_EQ(wide(), narrow());
}

TEST(TorchRng, UniformsUseTheLowMantissaBits) {
  TorchGenerator g(123);
  std::mt19937 ref(123);
  for (int i = 0; i < 100; ++i) {
    const uint32_t r = ref();
    ASSERT_EQ(g.uniform_float(), float(r & 0xffffffu) / 16777216.0f);
  }
  TorchGenerator h(9);
  std::mt19937 ref2(9);
  for (int i = 0; i < 100; ++i) {
    const uint64_t hi = ref2(), lo = ref2();
    ASSERT_EQ(h.uniform_double(), double(((hi << 32) | lo) & ((uint64_t(1) << 53) - 1)) / 9007199254740992.0);
  }
}

// The ground truth: latents = torch.randn(4, 16, 16, 16, generator=torch.Generator("cpu").manual_seed(42)).
TEST(TorchRng, RandnMatchesTorchBitForBit) {
  auto f = SafetensorsFile::open(latents_file());
  ASSERT_TRUE(f.ok()) << f.error().message;
  auto ref = f.value()->get("latents");
  ASSERT_TRUE(ref.ok()) << ref.error().message;
  const Tensor r = ref->contiguous();
  ASSERT_EQ(r.dtype(), DType::F32);
  ASSERT_EQ(r.shape(), (Shape{4, 16, 16, 16}));

  TorchGenerator g(42);
  Tensor got = g.randn({4, 16, 16, 16});
  ASSERT_EQ(got.shape(), r.shape());
  size_t first_diff = 0;
  while (first_diff < size_t(r.numel()) && std::memcmp(got.f32() + first_diff, r.f32() + first_diff, 4) == 0)
    ++first_diff;
  EXPECT_EQ(first_diff, size_t(r.numel())) << "first difference at element " << first_diff;
  EXPECT_EQ(std::memcmp(got.f32(), r.f32(), r.nbytes()), 0);
  EXPECT_TRUE(same_bits(torch_randn({4, 16, 16, 16}, 42).f32(), r.f32(), size_t(r.numel())));

  // torch.randn(10, 10) with seed 42: 100 = 6*16 + 4, so elements [0, 84) are the fixture's, and the last 16 are
  // redrawn.
  const std::vector<float> hundred = randn_vec(100, 42);
  EXPECT_TRUE(same_bits(hundred.data(), r.f32(), 84));
  EXPECT_FALSE(same_bits(hundred.data() + 84, r.f32() + 84, 16));
}

// Well-known outputs of the small-size path (torch.manual_seed(s); torch.randn(6)), printed to 4 decimals.
TEST(TorchRng, SmallRandnMatchesPublishedValues) {
  const std::vector<float> s42 = randn_vec(6, 42);
  const float e42[6] = {0.3367f, 0.1288f, 0.2345f, 0.2303f, -1.1229f, -0.1863f};
  const std::vector<float> s0 = randn_vec(6, 0);
  const float e0[6] = {1.5410f, -0.2934f, -2.1788f, 0.5684f, -1.0845f, -1.3986f};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(s42[i], e42[i], 5.1e-5) << i;
    EXPECT_NEAR(s0[i], e0[i], 5.1e-5) << i;
  }
  // torch.randn(10, 10) with seed 42 starts 1.9269, 1.4873, 0.9007, -2.1055, 0.6784, -1.2345, -0.0431, -1.6047.
  const std::vector<float> big = randn_vec(100, 42);
  const float eb[8] = {1.9269f, 1.4873f, 0.9007f, -2.1055f, 0.6784f, -1.2345f, -0.0431f, -1.6047f};
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(big[i], eb[i], 5.1e-5) << i;
}

// Below 16 elements: at::normal_distribution<double>, one value per element, the sine of each pair cached.
TEST(TorchRng, SmallSizesUseTheScalarDoublePathWithItsCache) {
  for (int64_t n = 1; n < 16; ++n) {
    TorchGenerator ref(7);
    std::vector<float> expect(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      // Rebuilt from the primitive draws: u1 (angle), u2 (radius); cos first, then the cached sin.
      if (i % 2 == 0) {
        const double u1 = ref.uniform_double(), u2 = ref.uniform_double();
        const double r = std::sqrt(-2.0 * std::log1p(-u2));
        const double th = 2.0 * std::numbers::pi * u1;
        expect[size_t(i)] = float(r * std::cos(th));
        if (i + 1 < n) expect[size_t(i) + 1] = float(r * std::sin(th));
      }
    }
    const std::vector<float> got = randn_vec(n, 7);
    EXPECT_TRUE(same_bits(got.data(), expect.data(), size_t(n))) << "n = " << n;
  }

  // The cached sample outlives the call: randn(3) then randn(1) is randn(4).
  TorchGenerator g(11);
  Tensor a = g.randn({3});
  EXPECT_TRUE(g.has_cached_normal());
  Tensor b = g.randn({1});
  EXPECT_FALSE(g.has_cached_normal());
  const std::vector<float> four = randn_vec(4, 11);
  EXPECT_TRUE(same_bits(a.f32(), four.data(), 3));
  EXPECT_TRUE(same_bits(b.f32(), four.data() + 3, 1));

  // The float32 path (>= 16 elements) neither uses nor clears it; manual_seed clears it.
  TorchGenerator h(11);
  (void)h.randn({3});
  Tensor big = h.randn({16});
  EXPECT_TRUE(h.has_cached_normal());
  Tensor c = h.randn({1});
  EXPECT_TRUE(same_bits(c.f32(), four.data() + 3, 1));
  TorchGenerator ref(11);
  for (int i = 0; i < 4; ++i) (void)ref.random64();  // the two pairs drawn by randn(3)
  std::vector<float> u(16);
  for (float& x : u) x = ref.uniform_float();
  torch_rng_detail::box_muller16(u.data(), 0.0f, 1.0f);
  EXPECT_TRUE(same_bits(big.f32(), u.data(), 16));
  (void)h.randn({3});
  h.manual_seed(11);
  EXPECT_FALSE(h.has_cached_normal());
  Tensor again = h.randn({3});
  EXPECT_TRUE(same_bits(again.f32(), four.data(), 3));
}

// Sizes that are not a multiple of 16: all uniforms first, blocks of 16 in place, then the last 16 redrawn.
TEST(TorchRng, TailOfSizesNotMultipleOf16IsRedrawn) {
  for (int64_t n : {16, 17, 31, 32, 33, 47, 100, 1000, 1023}) {
    const std::vector<float> got = randn_vec(n, 3);
    TorchGenerator ref(3);
    std::vector<float> u(static_cast<size_t>(n));
    for (float& x : u) x = ref.uniform_float();
    for (int64_t i = 0; i + 16 <= n; i += 16) torch_rng_detail::box_muller16(u.data() + i, 0.0f, 1.0f);
    if (n % 16 != 0) {
      for (int64_t i = n - 16; i < n; ++i) u[size_t(i)] = ref.uniform_float();
      torch_rng_detail::box_muller16(u.data() + n - 16, 0.0f, 1.0f);
    }
    EXPECT_TRUE(same_bits(got.data(), u.data(), size_t(n))) << "n = " << n;
    // The part before the redrawn tail is the prefix of randn(16 * floor(n / 16)).
    const int64_t whole = n / 16 * 16;
    const std::vector<float> prefix = randn_vec(whole, 3);
    EXPECT_TRUE(same_bits(got.data(), prefix.data(), size_t(n - 16))) << "n = " << n;
  }
}

TEST(TorchRng, MeanAndStdScaleTheFloatPath) {
  std::vector<float> a(32), b(32);
  TorchGenerator g1(5), g2(5);
  g1.normal_(a.data(), 32, 0.0, 1.0);
  g2.normal_(b.data(), 32, 2.0, 0.5);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(b[size_t(i)], std::fma(a[size_t(i)], 0.5f, 2.0f));
}

TEST(TorchRng, CephesKernelsAreCloseToLibm) {
  using torch_rng_detail::log_ps;
  using torch_rng_detail::sincos_ps;
  double worst_log = 0, worst_sc = 0;
  for (int i = 1; i <= 100000; ++i) {
    const float x = float(i) / 100000.0f;  // (0, 1], the range Box-Muller feeds it
    worst_log = std::max(worst_log, std::fabs(double(log_ps(x)) - std::log(double(x))));
    const float th = 6.2831855f * float(i - 1) / 100000.0f;  // [0, 2 pi)
    float s, c;
    sincos_ps(th, &s, &c);
    worst_sc = std::max(worst_sc, std::fabs(double(s) - std::sin(double(th))));
    worst_sc = std::max(worst_sc, std::fabs(double(c) - std::cos(double(th))));
  }
  EXPECT_LT(worst_log, 2e-6);
  EXPECT_LT(worst_sc, 1e-6);
  EXPECT_TRUE(std::isnan(log_ps(0.0f)));
  EXPECT_TRUE(std::isnan(log_ps(-1.0f)));
}

TEST(TorchRng, MomentsLookNormal) {
  const std::vector<float> v = randn_vec(1 << 16, 1234);
  double m = 0, m2 = 0;
  for (float x : v) m += x;
  m /= double(v.size());
  for (float x : v) m2 += (x - m) * (x - m);
  m2 /= double(v.size());
  EXPECT_NEAR(m, 0.0, 0.02);
  EXPECT_NEAR(m2, 1.0, 0.02);
}

}  // namespace
