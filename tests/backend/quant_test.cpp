// ggml's block formats (backend/cpu/quant.h): each type's dequantization against a reference written here
// from ggml's struct layouts and loop structure (block by block, in ggml's order, not the element-index
// arithmetic quant.cpp uses), on blocks of random bytes with chosen scales; then encode -> decode error bounds
// on Gaussian rows, which the K encoders' simple fit must meet.
#include "backend/cpu/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/quant_blocks.h"
#include "core/dtype.h"

using namespace meshdit;

namespace {

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// --- references, one block each, in ggml's loop order -----------------------------------------------------------

void ref_q4_0(const uint8_t* b, float* y) {  // struct { half d; uint8 qs[16]; }
  for (int j = 0; j < 16; ++j) {
    y[j] = half(b) * float(int(b[2 + j] & 0x0F) - 8);
    y[j + 16] = half(b) * float(int(b[2 + j] >> 4) - 8);
  }
}
void ref_q4_1(const uint8_t* b, float* y) {  // { half d, m; uint8 qs[16]; }
  for (int j = 0; j < 16; ++j) {
    y[j] = float(b[4 + j] & 0x0F) * half(b) + half(b + 2);
    y[j + 16] = float(b[4 + j] >> 4) * half(b) + half(b + 2);
  }
}
void ref_q5_0(const uint8_t* b, float* y) {  // { half d; uint8 qh[4]; uint8 qs[16]; }
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  for (int j = 0; j < 16; ++j) {
    const uint8_t xh0 = uint8_t(((qh >> j) << 4) & 0x10), xh1 = uint8_t((qh >> (j + 12)) & 0x10);
    y[j] = float(int((b[6 + j] & 0x0F) | xh0) - 16) * half(b);
    y[j + 16] = float(int((b[6 + j] >> 4) | xh1) - 16) * half(b);
  }
}
void ref_q5_1(const uint8_t* b, float* y) {  // { half d, m; uint8 qh[4]; uint8 qs[16]; }
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  for (int j = 0; j < 16; ++j) {
    const uint8_t xh0 = uint8_t(((qh >> j) << 4) & 0x10), xh1 = uint8_t((qh >> (j + 12)) & 0x10);
    y[j] = float((b[8 + j] & 0x0F) | xh0) * half(b) + half(b + 2);
    y[j + 16] = float((b[8 + j] >> 4) | xh1) * half(b) + half(b + 2);
  }
}
void ref_q8_0(const uint8_t* b, float* y) {  // { half d; int8 qs[32]; }
  for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * half(b);
}
void ref_q2_k(const uint8_t* b, float* y) {  // { uint8 scales[16]; uint8 qs[64]; half d, dmin; }
  const float d = half(b + 80), mn = half(b + 82);
  const uint8_t* q = b + 16;
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int h = 0; h < 2; ++h) {
        const uint8_t sc = b[is++];
        for (int l = 0; l < 16; ++l)
          *y++ = d * float(sc & 0xF) * float((q[l + 16 * h] >> shift) & 3) - mn * float(sc >> 4);
      }
    }
    q += 32;
  }
}
void ref_q3_k(const uint8_t* b, float* y) {  // { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }
  // ggml unpacks the 12 bytes with 32-bit masks; the same, word by word.
  uint32_t aux[4];
  std::memcpy(aux, b + 96, 12);
  const uint32_t tmp = aux[2], k1 = 0x03030303, k2 = 0x0f0f0f0f;
  aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
  aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
  aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
  aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
  int8_t scales[16];
  std::memcpy(scales, aux, 16);
  const float d = half(b + 108);
  const uint8_t *q = b + 32, *hm = b;
  uint8_t m = 1;
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int h = 0; h < 2; ++h) {
        const float dl = d * float(scales[is++] - 32);
        for (int l = 0; l < 16; ++l)
          *y++ = dl * float(int((q[l + 16 * h] >> shift) & 3) - ((hm[l + 16 * h] & m) ? 0 : 4));
      }
      m = uint8_t(m << 1);
    }
    q += 32;
  }
}
void ref_get_scale_min(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
void ref_q4_k(const uint8_t* b, float* y) {  // { half d, dmin; uint8 scales[12]; uint8 qs[128]; }
  const float d = half(b), mn = half(b + 2);
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    ref_get_scale_min(is, b + 4, &sc, &m);
    const float d1 = d * sc, m1 = mn * m;
    ref_get_scale_min(is + 1, b + 4, &sc, &m);
    const float d2 = d * sc, m2 = mn * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
  }
}
void ref_q5_k(const uint8_t* b, float* y) {  // { half d, dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }
  const float d = half(b), mn = half(b + 2);
  const uint8_t *ql = b + 48, *qh = b + 16;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32) {
    uint8_t sc, m;
    ref_get_scale_min(is, b + 4, &sc, &m);
    const float d1 = d * sc, m1 = mn * m;
    ref_get_scale_min(is + 1, b + 4, &sc, &m);
    const float d2 = d * sc, m2 = mn * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    u1 = uint8_t(u1 << 2);
    u2 = uint8_t(u2 << 2);
  }
}
void ref_q6_k(const uint8_t* b, float* y) {  // { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }
  const float d = half(b + 208);
  const uint8_t *ql = b, *qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}
void ref_q8_k(const uint8_t* b, float* y) {  // { float d; int8 qs[256]; int16 bsums[16]; }
  float d;
  std::memcpy(&d, b, 4);
  for (int j = 0; j < 256; ++j) y[j] = d * float(int8_t(b[4 + j]));
}

struct Case {
  QuantType type;
  size_t bytes;
  int block;
  void (*ref)(const uint8_t*, float*);
  std::vector<int> half_at;  // fp16 scale fields: set to finite values
  double roundtrip_bound;    // RMS error / RMS of a Gaussian row
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {QuantType::Q4_0, 18, 32, ref_q4_0, {0}, 0.12},      {QuantType::Q4_1, 20, 32, ref_q4_1, {0, 2}, 0.10},
      {QuantType::Q5_0, 22, 32, ref_q5_0, {0}, 0.05},      {QuantType::Q5_1, 24, 32, ref_q5_1, {0, 2}, 0.05},
      {QuantType::Q8_0, 34, 32, ref_q8_0, {0}, 0.007},     {QuantType::Q2_K, 84, 256, ref_q2_k, {80, 82}, 0.45},
      {QuantType::Q3_K, 110, 256, ref_q3_k, {108}, 0.20},  {QuantType::Q4_K, 144, 256, ref_q4_k, {0, 2}, 0.10},
      {QuantType::Q5_K, 176, 256, ref_q5_k, {0, 2}, 0.05}, {QuantType::Q6_K, 210, 256, ref_q6_k, {208}, 0.025},
      {QuantType::Q8_K, 292, 256, ref_q8_k, {}, 0.02},
  };
  return c;
}

TEST(Quant, BlockLayoutsAreGgmls) {
  for (const auto& c : cases()) {
    EXPECT_EQ(quant_block_bytes(c.type), c.bytes) << quant_type_name(c.type);
    EXPECT_EQ(quant_block_size(c.type), c.block) << quant_type_name(c.type);
    EXPECT_TRUE(quant_is_block(c.type));
  }
  EXPECT_EQ(quant_row_bytes(QuantType::Q4_K, 3072), 12u * 144u);
  EXPECT_EQ(quant_row_bytes(QuantType::BF16, 5), 10u);
  QuantType t;
  ASSERT_TRUE(quant_type_from_name("q4_k", &t));
  EXPECT_EQ(t, QuantType::Q4_K);
  EXPECT_FALSE(quant_type_from_name("q4_k_m", &t));
  EXPECT_FALSE(quant_type_known(16));
  EXPECT_STREQ(quant_type_name(16), "IQ2_XXS");
}

TEST(Quant, DequantizeMatchesReferenceOnRandomBlocks) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (const auto& c : cases()) {
    const int nblocks = 3;
    std::vector<uint8_t> data(c.bytes * nblocks);
    for (auto& b : data) b = uint8_t(byte(rng));
    for (int i = 0; i < nblocks; ++i) {
      for (int off : c.half_at) {
        const uint16_t h = f32_to_f16(scale(rng));
        std::memcpy(&data[i * c.bytes + size_t(off)], &h, 2);
      }
      if (c.type == QuantType::Q8_K) {
        const float d = scale(rng);
        std::memcpy(&data[i * c.bytes], &d, 4);
      }
    }
    std::vector<float> got(size_t(c.block * nblocks)), want(got.size());
    dequantize_row(c.type, data.data(), got.data(), int64_t(got.size()));
    for (int i = 0; i < nblocks; ++i) c.ref(&data[i * c.bytes], &want[size_t(i * c.block)]);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << quant_type_name(c.type) << " value " << i;
  }
}

// The blocks' fp16 scales go through core/dtype.h's f16_to_f32 (one definition for host and device): every half
// decodes to the float that encodes back to it (NaNs to a NaN), with the sign and the known values in place.
TEST(Quant, HalfDecodeIsExactOnEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(f)) << "half 0x" << std::hex << h;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), uint16_t(h)) << "half 0x" << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // the smallest subnormal
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  const uint8_t h1[2] = {0x00, 0x3c};
  EXPECT_EQ(quant_blocks::half_at(h1), 1.0f);
  const uint8_t le[4] = {0x01, 0x80, 0xff, 0x7f};
  EXPECT_EQ(quant_blocks::u16_at(le), 0x8001u);
  EXPECT_EQ(quant_blocks::u32_at(le), 0x7fff8001u);
}

TEST(Quant, FloatTypesDequantizeAsStored) {
  const std::vector<float> x{1.5f, -2.25f, 0.0f, 3.0e-5f};
  for (QuantType t : {QuantType::F32, QuantType::F16, QuantType::BF16, QuantType::F64}) {
    std::vector<uint8_t> buf(quant_row_bytes(t, 4));
    quantize_row(t, x.data(), buf.data(), 4);
    std::vector<float> y(4);
    dequantize_row(t, buf.data(), y.data(), 4);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(y[size_t(i)], x[size_t(i)]) << quant_type_name(t);
    EXPECT_NEAR(y[3], x[3], 2e-7) << quant_type_name(t);  // bf16 keeps 8 bits, f16 at 3e-5 is subnormal
  }
}

TEST(Quant, EncodeDecodeErrorWithinBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.f, 0.02f);
  const int64_t n = 256 * 8;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = g(rng);
  x[5] = 0.3f;  // an outlier, as weights have
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double rms = std::sqrt(ss / double(n));
  for (const auto& c : cases()) {
    std::vector<uint8_t> q(quant_row_bytes(c.type, n));
    quantize_row(c.type, x.data(), q.data(), n);
    std::vector<float> y(static_cast<size_t>(n));
    dequantize_row(c.type, q.data(), y.data(), n);
    double es = 0;
    for (int64_t i = 0; i < n; ++i) es += double(y[size_t(i)] - x[size_t(i)]) * double(y[size_t(i)] - x[size_t(i)]);
    const double rel = std::sqrt(es / double(n)) / rms;
    EXPECT_LT(rel, c.roundtrip_bound) << quant_type_name(c.type);
    std::printf("%-5s rms error / rms %.4f\n", quant_type_name(c.type), rel);
  }
}

TEST(Quant, Q8_0RoundsAsGgmlsReference) {
  // d = absmax / 127 (stored as fp16), q = round(x / d) with the unrounded d.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[size_t(i)] = float(i) * (127.f / 31.f);
  std::vector<uint8_t> b(34);
  quantize_row(QuantType::Q8_0, x.data(), b.data(), 32);
  EXPECT_NEAR(half(b.data()), 1.0f, 1e-3f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(int8_t(b[size_t(2 + i)]), int8_t(std::lround(float(i) * 127.f / 31.f))) << i;
  // Q4_0: the signed extreme maps to -8: a block whose largest magnitude is negative stores q = 0 there.
  std::vector<float> y(32, 0.f);
  y[3] = -4.f;
  y[4] = 2.f;
  std::vector<uint8_t> c(18);
  quantize_row(QuantType::Q4_0, y.data(), c.data(), 32);
  EXPECT_EQ(half(c.data()), 0.5f);
  EXPECT_EQ(c[2 + 3] & 0xF, 0);   // -4 / 0.5 + 8
  EXPECT_EQ(c[2 + 4] & 0xF, 12);  // 2 / 0.5 + 8
  EXPECT_EQ(c[2 + 0] & 0xF, 8);
}

}  // namespace
