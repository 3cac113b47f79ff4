// How close two images are: PSNR and SSIM (Wang et al. 2004), for comparing a cached, quantized or
// otherwise approximated generation with the exact one of the same seed.
#pragma once
#include <cstdint>
#include <vector>

namespace meshdit {

// Images as interleaved float samples in [0, 1], `height` rows of `width` pixels of `channels` values.
struct ImageView {
  const float* data = nullptr;
  int64_t width = 0, height = 0, channels = 3;
};

// 10 log10(1 / MSE) over every sample; +infinity for identical images.
double psnr(const ImageView& a, const ImageView& b);
// Mean SSIM over every channel and every 11 x 11 Gaussian window (sigma 1.5, K1 = 0.01, K2 = 0.03, L = 1)
// that fits inside the image; images smaller than a window use one window of the whole image.
double ssim(const ImageView& a, const ImageView& b);

// 8-bit samples (a PNG's) as floats in [0, 1].
std::vector<float> unit_samples(const std::vector<uint8_t>& bytes);

}  // namespace meshdit
