#include "core/image_metrics.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace meshdit;

TEST(ImageMetrics, PsnrOfAKnownError) {
  std::vector<float> a(16 * 16 * 3, 0.5f), b = a;
  EXPECT_TRUE(std::isinf(psnr({a.data(), 16, 16, 3}, {b.data(), 16, 16, 3})));
  for (float& v : b) v += 0.1f;  // MSE 0.01: 20 dB
  EXPECT_NEAR(psnr({a.data(), 16, 16, 3}, {b.data(), 16, 16, 3}), 20.0, 1e-4);
}

TEST(ImageMetrics, SsimIsOneForTheSameImageAndFallsWithNoise) {
  std::vector<float> a(32 * 24 * 3), b(a.size()), c(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float((i * 37) % 101) / 100.0f;
    b[i] = a[i];
    c[i] = std::fmod(a[i] + float((i * 13) % 7) * 0.05f, 1.0f);
  }
  const ImageView va{a.data(), 32, 24, 3}, vb{b.data(), 32, 24, 3}, vc{c.data(), 32, 24, 3};
  EXPECT_NEAR(ssim(va, vb), 1.0, 1e-12);
  const double noisy = ssim(va, vc);
  EXPECT_LT(noisy, 0.9);
  EXPECT_GT(noisy, -1.0);
  // A constant offset keeps the structure: SSIM stays near 1 while PSNR drops.
  std::vector<float> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] * 0.5f + 0.25f;
  std::vector<float> e(a.size());
  for (size_t i = 0; i < a.size(); ++i) e[i] = d[i] + 0.02f;
  EXPECT_GT(ssim({d.data(), 32, 24, 3}, {e.data(), 32, 24, 3}), 0.99);
}
