// FP8 E4M3 (the OCP / NVIDIA "e4m3fn" format: bias 7, no infinities, S.1111.111 the only NaN, largest finite
// 448) as FP8 precision uses it (backend/precision.h): one float32 scale per tensor, amax / 448, and values
// rounded to nearest even with saturation to +-448. The same header compiles for the host and, under nvcc, for
// the device, so the GPU's quantized bytes are the CPU's bit for bit (the CPU backend is the GPU's reference);
// the hardware's cvt instructions are not used for that reason.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace meshdit {

constexpr float kE4M3Max = 448.0f;

// Round to nearest even; |v| above 448 (infinities included) saturates to +-448 (a tie at 464 would round up
// to 480, which e4m3fn cannot hold); NaN stays NaN (sign kept). Integer arithmetic only, so it does not depend on
// the floating-point rounding mode or on fast-math flags.
MD_HOST_DEVICE inline uint8_t f32_to_e4m3(float v) {
  const uint32_t u = float_to_bits(v);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7f);   // NaN
  if (a >= 0x43e00000u) return uint8_t(sign | 0x7e);  // >= 448, infinities included: saturate
  const int32_t e = int32_t(a >> 23) - 127;           // unbiased float exponent (-127: zero or subnormal)
  if (e < -6) {
    // Below e4m3's smallest normal 2^-6: a multiple of 2^-9. The float's significand (implicit bit included)
    // shifted so that 2^-9 is one unit; a result of 8 is the smallest normal's code, 0x08, as it should be.
    // Below 2^-11 (a quarter of the smallest subnormal, float subnormals included): zero. Also keeps the shift
    // below under 32.
    if (e < -11) return sign;
    const uint32_t sig = (a & 0x7fffffu) | 0x800000u;  // value = sig * 2^(e - 23)
    const int shift = 23 - 9 - e;                      // value / 2^-9 = sig / 2^shift (shift in 21..25)
    uint32_t q = sig >> shift;
    const uint32_t rem = sig & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint8_t(sign | q);
  }
  // Normal: 3 of the float's 23 mantissa bits kept, rounded to nearest even; a carry moves into the exponent
  // (0x77 + 1 = 0x78 is 2^(e+1)). The saturation test above keeps the result at or below 0x7e.
  uint32_t code = (uint32_t(e + 7) << 3) | ((a >> 20) & 7u);
  const uint32_t rem = a & 0xfffffu, half = 0x80000u;
  if (rem > half || (rem == half && (code & 1u))) ++code;
  if (code > 0x7eu) code = 0x7eu;  // [448, 464) rounds to 448 anyway; kept for safety against 0x7f (NaN)
  return uint8_t(sign | code);
}

MD_HOST_DEVICE inline float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24;
  const uint32_t exp = (b >> 3) & 0xfu, man = b & 7u;
  if (exp == 0xf && man == 7) return bits_to_float(sign | 0x7fc00000u);  // NaN
  if (exp == 0) {
    // Subnormal: man * 2^-9, exact in float (man < 8).
    const float m = float(man) * 0.001953125f;
    return sign ? -m : m;
  }
  return bits_to_float(sign | ((exp - 7 + 127) << 23) | (man << 20));
}

// The per-tensor scale of FP8 precision: amax / 448, or 1 for a tensor of zeros (any scale would do; 1 keeps
// x / scale finite). amax as fmaxf over |v| gives it: NaNs ignored, whatever the order of the reduction.
MD_HOST_DEVICE inline float e4m3_scale(float amax) { return amax > 0.0f ? amax / kE4M3Max : 1.0f; }

// One value quantized with that scale: e4m3(v / scale), the division correctly rounded on both sides.
MD_HOST_DEVICE inline uint8_t quantize_e4m3(float v, float scale) { return f32_to_e4m3(v / scale); }

}  // namespace meshdit
