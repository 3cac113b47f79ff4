#include "core/image_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace meshdit {
namespace {

void check_same(const ImageView& a, const ImageView& b) {
  MD_CHECK(a.width == b.width && a.height == b.height && a.channels == b.channels && a.width > 0 && a.height > 0,
           "image metrics: images of different sizes");
}

}  // namespace

double psnr(const ImageView& a, const ImageView& b) {
  check_same(a, b);
  const int64_t n = a.width * a.height * a.channels;
  double se = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a.data[i]) - double(b.data[i]);
    se += d * d;
  }
  if (se == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(double(n) / se);
}

double ssim(const ImageView& a, const ImageView& b) {
  check_same(a, b);
  // The window is separable: Gaussian weights along rows, then along columns, of x, y, x^2, y^2 and xy.
  const int64_t win = std::min<int64_t>({11, a.width, a.height});
  const double sigma = 1.5;
  std::vector<double> g(static_cast<size_t>(win));
  double gs = 0;
  for (int64_t i = 0; i < win; ++i) {
    const double u = (double(i) - double(win - 1) / 2) / sigma;
    gs += g[size_t(i)] = std::exp(-0.5 * u * u);
  }
  for (double& v : g) v /= gs;
  const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  const int64_t W = a.width, H = a.height, C = a.channels, ow = W - win + 1, oh = H - win + 1;
  double total = 0;
  std::vector<double> rows(size_t(5 * H * ow));  // per channel: [moment][y][x] filtered along x
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < ow; ++x) {
        double m[5] = {0, 0, 0, 0, 0};
        for (int64_t k = 0; k < win; ++k) {
          const int64_t i = (y * W + x + k) * C + c;
          const double p = a.data[i], q = b.data[i], w = g[size_t(k)];
          m[0] += w * p, m[1] += w * q, m[2] += w * p * p, m[3] += w * q * q, m[4] += w * p * q;
        }
        for (int j = 0; j < 5; ++j) rows[size_t((j * H + y) * ow + x)] = m[j];
      }
    for (int64_t y = 0; y < oh; ++y)
      for (int64_t x = 0; x < ow; ++x) {
        double m[5] = {0, 0, 0, 0, 0};
        for (int64_t k = 0; k < win; ++k)
          for (int j = 0; j < 5; ++j) m[j] += g[size_t(k)] * rows[size_t((j * H + y + k) * ow + x)];
        const double vx = m[2] - m[0] * m[0], vy = m[3] - m[1] * m[1], cxy = m[4] - m[0] * m[1];
        total += ((2 * m[0] * m[1] + c1) * (2 * cxy + c2)) / ((m[0] * m[0] + m[1] * m[1] + c1) * (vx + vy + c2));
      }
  }
  return total / double(C * oh * ow);
}

std::vector<float> unit_samples(const std::vector<uint8_t>& bytes) {
  std::vector<float> f(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) f[i] = float(bytes[i]) / 255.0f;
  return f;
}

}  // namespace meshdit
