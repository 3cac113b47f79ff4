// Branch-free float math that the compiler vectorises: the softmax inside attention evaluates one exp per
// score, and a libm call per score would cost as much as the matrix products around it.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace meshdit::cpu {

// exp(x) with ~2 ulp error (Cephes polynomial, range-reduced by powers of two); exactly 0 below -87.
inline float fast_exp(float x) {
  const float in = x;
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return in < -87.0f ? 0.0f : y * scale;
}

inline void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i]);
}

}  // namespace meshdit::cpu
