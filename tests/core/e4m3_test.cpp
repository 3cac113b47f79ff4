// core/fp8.h's e4m3 (e4m3fn) conversions: every code decodes to the value the format defines and encodes back to
// itself; rounding is to nearest even in the normal and the subnormal range and across their boundary; values
// past 448 (infinities too) saturate; NaN stays NaN. The per-tensor scale is amax / 448.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/fp8.h"

using namespace meshdit;

namespace {

// The format's definition, spelled differently from the header (ldexp, no bit tricks).
double e4m3_value(int b) {
  const int exp = (b >> 3) & 0xF, man = b & 7;
  const double sign = (b & 0x80) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(double(man), -9);
  return sign * std::ldexp(1.0 + man / 8.0, exp - 7);
}

TEST(E4M3, EveryCodeDecodesToItsValueAndEncodesBack) {
  for (int b = 0; b < 256; ++b) {
    SCOPED_TRACE(b);
    const float v = e4m3_to_f32(uint8_t(b));
    if ((b & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v));
      continue;
    }
    EXPECT_EQ(double(v), e4m3_value(b));
    EXPECT_EQ(std::signbit(v), (b & 0x80) != 0);
    EXPECT_EQ(f32_to_e4m3(v), uint8_t(b));  // -0 stays 0x80
  }
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));
}

TEST(E4M3, RoundsToNearestEvenInTheNormalRange) {
  EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);   // 1 + 1/16: a tie between 1 (man 0) and 1.125 (man 1): even, 1
  EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3A);   // 1 + 3/16: a tie between 1.125 and 1.25: even, 1.25
  EXPECT_EQ(f32_to_e4m3(1.0626f), 0x39);   // just above the tie: up
  EXPECT_EQ(f32_to_e4m3(1.0624f), 0x38);   // just below: down
  EXPECT_EQ(f32_to_e4m3(1.9375f), 0x40);   // 1 + 15/16: a tie between 1.875 (man 7, odd) and 2: the carry to 2
  EXPECT_EQ(f32_to_e4m3(-1.1875f), 0xBA);  // the sign apart
  EXPECT_EQ(f32_to_e4m3(240.0f), 0x77);    // 1.875 x 2^7: a code of its own
  EXPECT_EQ(f32_to_e4m3(232.0f), 0x76);    // a tie between 224 (man 6) and 240 (man 7): even, 224
}

TEST(E4M3, RoundsSubnormalsToNearestEven) {
  const float u = std::ldexp(1.0f, -9);  // the smallest subnormal
  EXPECT_EQ(f32_to_e4m3(u), 0x01);
  EXPECT_EQ(f32_to_e4m3(0.5f * u), 0x00);     // a tie between 0 and u: even, 0
  EXPECT_EQ(f32_to_e4m3(-0.5f * u), 0x80);    // -0
  EXPECT_EQ(f32_to_e4m3(0.5001f * u), 0x01);  // above the tie: u
  EXPECT_EQ(f32_to_e4m3(1.5f * u), 0x02);     // a tie between u and 2u: even, 2u
  EXPECT_EQ(f32_to_e4m3(2.5f * u), 0x02);     // a tie between 2u and 3u: even, 2u
  EXPECT_EQ(f32_to_e4m3(6.5f * u), 0x06);     // between 6u and 7u: even, 6u
  EXPECT_EQ(f32_to_e4m3(7.5f * u), 0x08);     // between 7u (the largest subnormal) and 2^-6: even, 2^-6
  EXPECT_EQ(f32_to_e4m3(0.25f * u), 0x00);    // far below: 0
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.0f, -6) * 1.0625f), 0x08);  // a tie just above the smallest normal: even
}

TEST(E4M3, SaturatesAndKeepsNaN) {
  EXPECT_EQ(f32_to_e4m3(448.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(449.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(464.0f), 0x7E);  // the tie with 480, which e4m3fn has not
  EXPECT_EQ(f32_to_e4m3(1e6f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7F, 0x7F);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::quiet_NaN()) & 0x7F, 0x7F);
  EXPECT_EQ(f32_to_e4m3(447.0f), 0x7E);  // between 416 and 448: nearer 448
  EXPECT_EQ(f32_to_e4m3(432.0f), 0x7E);  // a tie between 416 (man 5) and 448 (man 6): even, 448
}

TEST(E4M3, ScaleIsAmaxOver448) {
  EXPECT_EQ(e4m3_scale(448.0f), 1.0f);
  EXPECT_EQ(e4m3_scale(0.0f), 1.0f);  // a tensor of zeros
  EXPECT_FLOAT_EQ(e4m3_scale(3.5f), 3.5f / 448.0f);
  // The largest magnitude maps to 448 exactly (or its nearest e4m3 at worst, the division's rounding).
  for (float amax : {1.0f, 0.0137f, 3.3f, 1234.5f}) EXPECT_EQ(quantize_e4m3(amax, e4m3_scale(amax)) & 0x7F, 0x7E);
}

}  // namespace
