// Branch-free float math that the compiler vectorises: the softmax inside attention evaluates one exp per
// score, and a libm call per score would cost as much as the matrix products around it.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

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

// x[i] = exp(x[i] - sub).
inline void exp_sub_inplace(float* x, int64_t n, float sub) {
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i] - sub);
}

// x[i] = exp(x[i] - sub), returning their sum: the online softmax's one pass over a score row.
inline float exp_sub_sum(float* x, int64_t n, float sub) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      x[i + j] = fast_exp(x[i + j] - sub);
      acc[j] += x[i + j];
    }
  float s = 0;
  for (; i < n; ++i) {
    x[i] = fast_exp(x[i] - sub);
    s += x[i];
  }
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// Reductions written with kLanes independent partial results, so that the compiler can keep them in one
// vector register without -ffast-math (a single running float would have to be added in order).
constexpr int kLanes = 16;

// max(init, x[0..n)) with std::max's comparison (a NaN in x is skipped). Compilers do not vectorise a
// float max reduction without -ffinite-math-only, hence the intrinsics: MAXPS(a, b) = a > b ? a : b.
inline float max_of(const float* x, int64_t n, float init) {
  int64_t i = 0;
  float m = init;
#if defined(__AVX__)
  __m256 a = _mm256_set1_ps(init), b = a;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_max_ps(_mm256_loadu_ps(x + i), a);
    b = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), b);
  }
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, a);
  _mm256_store_ps(lanes + 8, b);
  for (float v : lanes) m = m < v ? v : m;
#endif
  for (; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

inline float sum_of(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  float s = 0;
  for (; i < n; ++i) s += x[i];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// dot(a, widened b) for a bf16 row b, in dot()'s order of operations (the same result as widening b into a
// buffer first) without the buffer: the widening is a shift the vector loop does on the fly.
inline float dot_bf16(const float* a, const uint16_t* b, int64_t n) {
  auto wide = [](uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * wide(b[i + j]);
  float s = 0;
  for (; i < n; ++i) s += a[i] * wide(b[i]);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// Sum and sum of squared deviations from `mean` of x[0..n), accumulated in double (as layer_norm
// always did) but lane-parallel.
inline double sum_f64(const float* x, int64_t n) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(x[i + j]);
  double s = 0;
  for (; i < n; ++i) s += double(x[i]);
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

inline double sq_dev_f64(const float* x, int64_t n, double mean) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      const double d = double(x[i + j]) - mean;
      acc[j] += d * d;
    }
  double s = 0;
  for (; i < n; ++i) {
    const double d = double(x[i]) - mean;
    s += d * d;
  }
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

// Activations in branch-free form. gelu_tanh: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)) exactly, which
// has no cancellation for negative x (1 + tanh(u) is computed as 2 / (1 + exp(-2u))); with fast_exp the
// result is within a few ulp of the tanh form evaluated in double.
inline float gelu_tanh_fast(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + fast_exp(-2.0f * u));
}
inline float silu_fast(float x) { return x / (1.0f + fast_exp(-x)); }
inline float quick_gelu_fast(float x) { return x / (1.0f + fast_exp(-1.702f * x)); }

}  // namespace meshdit::cpu
