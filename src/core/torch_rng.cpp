// See torch_rng.h. Compiled with -ffp-contract=off (CMakeLists.txt): every multiply-add that ATen's compiled
// kernel fuses is an explicit std::fma below, and every other operation rounds on its own.
#include "core/torch_rng.h"

#include <cmath>
#include <cstring>
#include <numbers>

namespace meshdit {

// ---- engine -------------------------------------------------------------------------------------------------

namespace {
constexpr int kMtN = 624, kMtM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu, kUpperMask = 0x80000000u, kLowerMask = 0x7fffffffu;

inline uint32_t mt_twist(uint32_t u, uint32_t v) {
  return (((u & kUpperMask) | (v & kLowerMask)) >> 1) ^ ((v & 1u) ? kMatrixA : 0u);
}
}  // namespace

TorchMt19937::TorchMt19937(uint64_t seed) : seed_(seed) {
  state_[0] = uint32_t(seed & 0xffffffffu);
  for (int j = 1; j < kMtN; ++j) state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + uint32_t(j);
  left_ = 1;  // the first draw regenerates the state
  next_ = 0;
}

void TorchMt19937::next_state() {
  int k = 0;
  for (; k < kMtN - kMtM; ++k) state_[k] = state_[k + kMtM] ^ mt_twist(state_[k], state_[k + 1]);
  for (; k < kMtN - 1; ++k) state_[k] = state_[k + kMtM - kMtN] ^ mt_twist(state_[k], state_[k + 1]);
  state_[kMtN - 1] = state_[kMtM - 1] ^ mt_twist(state_[kMtN - 1], state_[0]);
  left_ = kMtN;
  next_ = 0;
}

uint32_t TorchMt19937::operator()() {
  if (--left_ == 0) next_state();
  uint32_t y = state_[next_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

// ---- AVX2 kernel arithmetic, one lane ---------------------------------------------------------------------------

namespace torch_rng_detail {
namespace {

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The Cephes constants of avx_mathfun.h, rounded to float as its _PS256_CONST tables are.
constexpr float kSqrtHalf = float(0.707106781186547524);
constexpr float kLogP[9] = {float(7.0376836292E-2),  float(-1.1514610310E-1), float(1.1676998740E-1),
                            float(-1.2420140846E-1), float(1.4249322787E-1),  float(-1.6668057665E-1),
                            float(2.0000714765E-1),  float(-2.4999993993E-1), float(3.3333331174E-1)};
constexpr float kLogQ1 = float(-2.12194440e-4), kLogQ2 = float(0.693359375);
constexpr float kMinusDP1 = float(-0.78515625), kMinusDP2 = float(-2.4187564849853515625e-4),
                kMinusDP3 = float(-3.77489497744594108e-8);
constexpr float kSinCof[3] = {float(-1.9515295891E-4), float(8.3321608736E-3), float(-1.6666654611E-1)};
constexpr float kCosCof[3] = {float(2.443315711809948E-005), float(-1.388731625493765E-003),
                              float(4.166664568298827E-002)};
constexpr float kFourOverPi = float(1.27323954473516);

}  // namespace

// log256_ps. GCC contracts each `mul` whose only use is an add/sub into an FMA; where two products meet in
// one add (y*z + e*q1), the product that comes first in the source is the one fused. This reproduces
// torch.randn(4,16,16,16, seed 42) bit for bit (tests/core/torch_rng_test.cpp).
float log_ps(float x) {
  const bool invalid = x <= 0.0f;  // _CMP_LE_OS: false for NaN
  const float min_norm = from_bits(0x00800000u);
  x = (x > min_norm) ? x : min_norm;  // _mm256_max_ps(x, min_norm)
  int32_t imm0 = int32_t(to_bits(x) >> 23);
  x = from_bits((to_bits(x) & ~0x7f800000u) | to_bits(0.5f));  // mantissa, exponent of 0.5: [0.5, 1)
  imm0 -= 0x7f;
  float e = float(imm0);
  e = e + 1.0f;
  const bool lt = x < kSqrtHalf;
  const float tmp = lt ? x : 0.0f;
  x = x - 1.0f;
  e = e - (lt ? 1.0f : 0.0f);
  x = x + tmp;
  const float z = x * x;
  float y = kLogP[0];
  for (int i = 1; i < 9; ++i) y = std::fma(y, x, kLogP[i]);
  y = y * x;
  y = std::fma(y, z, e * kLogQ1);
  y = std::fma(-z, 0.5f, y);  // y - z*0.5 (z*0.5 is exact, so fused or not is the same)
  x = x + y;
  x = std::fma(e, kLogQ2, x);
  if (invalid) x = from_bits(0xffffffffu);  // or with an all-ones mask: NaN
  return x;
}

// sincos256_ps.
void sincos_ps(float xin, float* s, float* c) {
  uint32_t sign_sin = to_bits(xin) & 0x80000000u;
  float x = from_bits(to_bits(xin) & 0x7fffffffu);
  float y = x * kFourOverPi;
  int32_t j = int32_t(y);  // _mm256_cvttps_epi32
  j = (j + 1) & ~1;
  y = float(j);
  const uint32_t swap_sign_sin = uint32_t(j & 4) << 29;
  const bool poly_sin = (j & 2) == 0;
  // Extended precision modular arithmetic, each step fused: x = ((x - y*DP1) - y*DP2) - y*DP3.
  x = std::fma(y, kMinusDP1, x);
  x = std::fma(y, kMinusDP2, x);
  x = std::fma(y, kMinusDP3, x);
  const uint32_t sign_cos = uint32_t(~(j - 2) & 4) << 29;
  sign_sin ^= swap_sign_sin;

  const float z = x * x;
  float yc = kCosCof[0];
  yc = std::fma(yc, z, kCosCof[1]);
  yc = std::fma(yc, z, kCosCof[2]);
  yc = yc * z;
  yc = std::fma(yc, z, -(z * 0.5f));  // (yc*z) - (z*0.5): the first product fused
  yc = yc + 1.0f;

  float ys = kSinCof[0];
  ys = std::fma(ys, z, kSinCof[1]);
  ys = std::fma(ys, z, kSinCof[2]);
  ys = ys * z;
  ys = std::fma(ys, x, x);

  // Blend as the kernel does (and/andnot, then sub and add), keeping its signed-zero behaviour.
  const float ysin2 = poly_sin ? ys : 0.0f;
  const float ysin1 = poly_sin ? 0.0f : yc;
  ys = ys - ysin2;
  yc = yc - ysin1;
  const float sin_v = ysin1 + ysin2;
  const float cos_v = yc + ys;
  *s = from_bits(to_bits(sin_v) ^ sign_sin);
  *c = from_bits(to_bits(cos_v) ^ sign_cos);
}

void box_muller16(float* data, float mean, float std) {
  const float two_pi = float(2.0f * std::numbers::pi);  // _mm256_set1_ps(2.0f * c10::pi<double>)
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * log_ps(u1));
    const float theta = two_pi * u2;
    float sin_t, cos_t;
    sincos_ps(theta, &sin_t, &cos_t);
    const float n1 = radius * cos_t;
    const float n2 = radius * sin_t;
    data[j] = std::fma(n1, std, mean);
    data[j + 8] = std::fma(n2, std, mean);
  }
}

}  // namespace torch_rng_detail

// ---- generator ----------------------------------------------------------------------------------------------

void TorchGenerator::manual_seed(uint64_t seed) {
  engine_ = TorchMt19937(seed);
  next_double_normal_.reset();
}

uint64_t TorchGenerator::random64() {
  const uint64_t hi = engine_();
  const uint64_t lo = engine_();
  return (hi << 32) | lo;
}

float TorchGenerator::uniform_float() {
  constexpr uint32_t kMask = (1u << 24) - 1;
  constexpr float kScale = 1.0f / float(1u << 24);
  return float(random() & kMask) * kScale;
}

double TorchGenerator::uniform_double() {
  constexpr uint64_t kMask = (uint64_t(1) << 53) - 1;
  constexpr double kScale = 1.0 / double(uint64_t(1) << 53);
  return double(random64() & kMask) * kScale;
}

double TorchGenerator::normal_double(double mean, double std) {
  if (next_double_normal_) {
    const double v = *next_double_normal_;
    next_double_normal_.reset();
    return std::fma(v, std, mean);
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * std::numbers::pi * u1;
  next_double_normal_ = r * std::sin(theta);
  return std::fma(r * std::cos(theta), std, mean);
}

void TorchGenerator::normal_(float* data, int64_t n, double mean, double std) {
  if (n <= 0) return;
  if (n < 16) {  // the serial kernel: at::normal_distribution<double>, one value per element
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(normal_double(mean, std));
    return;
  }
  const float mean_f = static_cast<float>(mean), std_f = static_cast<float>(std);
  for (int64_t i = 0; i < n; ++i) data[i] = uniform_float();
  for (int64_t i = 0; i + 16 <= n; i += 16) torch_rng_detail::box_muller16(data + i, mean_f, std_f);
  if (n % 16 != 0) {  // redraw and recompute the last 16 values
    float* tail = data + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    torch_rng_detail::box_muller16(tail, mean_f, std_f);
  }
}

Tensor TorchGenerator::randn(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  normal_(t.f32(), t.numel());
  return t;
}

Tensor torch_randn(const Shape& shape, uint64_t seed) {
  TorchGenerator g(seed);
  return g.randn(shape);
}

}  // namespace meshdit
