// ggml's block decoders (backend/cpu/quant.h describes the formats), one definition for the host and the
// device: the CPU's dequantize_row (cpu/quant.cpp) and the CUDA linear_quantized's tile decode (cuda/linear.cu)
// both call these, so a GGUF weight decodes to the same floats on either side. They are plain C++ under any
// compiler, __host__ __device__ under nvcc.
//
// Bit-exactness across the two needs three things, all kept here: bytes are assembled little-endian one at a
// time (a block is 18, 20, 22, 24 or 34 bytes long, so its halves and words are not aligned on the device, and
// no memcpy is needed on either side); the fp16 scale is decoded by integer arithmetic (core/dtype.h's
// f16_to_f32, the same function on both sides); and no product is contracted into a fused multiply-add (GCC in ISO mode
// does not contract, and the CUDA backend builds with --fmad=false).
//
// Each decoder takes one block and a sink: `out.put(j, v)` receives value j of the block (0 <= j < the block
// size) exactly once. The CPU's sink stores floats; the device's stores floats or rounds them to bf16.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace meshdit::quant_blocks {

MD_HOST_DEVICE inline uint16_t u16_at(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
MD_HOST_DEVICE inline uint32_t u32_at(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

MD_HOST_DEVICE inline float half_at(const uint8_t* p) { return f16_to_f32(u16_at(p)); }

// A sink that stores the values as floats at y.
struct FloatSink {
  float* y;
  MD_HOST_DEVICE void put(int j, float v) const { y[j] = v; }
};

// --- Q4_0 ... Q8_0 (32 values per block) ---------------------------------------------------------------------
// The first 16 values of a block go to the low nibbles, the last 16 to the high ones; Q5's fifth bits sit in
// a 32-bit mask, bit j for value j.

template <class Out>
MD_HOST_DEVICE inline void dq_q4_0(const uint8_t* b, const Out& out) {
  const float d = half_at(b);
  for (int j = 0; j < 16; ++j) {
    out.put(j, float((b[2 + j] & 0xF) - 8) * d);
    out.put(j + 16, float((b[2 + j] >> 4) - 8) * d);
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q4_1(const uint8_t* b, const Out& out) {
  const float d = half_at(b), m = half_at(b + 2);
  for (int j = 0; j < 16; ++j) {
    out.put(j, float(b[4 + j] & 0xF) * d + m);
    out.put(j + 16, float(b[4 + j] >> 4) * d + m);
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q5_0(const uint8_t* b, const Out& out) {
  const float d = half_at(b);
  const uint32_t qh = u32_at(b + 2);
  for (int j = 0; j < 16; ++j) {
    const int hi0 = int((qh >> j) & 1) << 4, hi1 = int((qh >> (j + 16)) & 1) << 4;
    out.put(j, float(((b[6 + j] & 0xF) | hi0) - 16) * d);
    out.put(j + 16, float(((b[6 + j] >> 4) | hi1) - 16) * d);
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q5_1(const uint8_t* b, const Out& out) {
  const float d = half_at(b), m = half_at(b + 2);
  const uint32_t qh = u32_at(b + 4);
  for (int j = 0; j < 16; ++j) {
    const int hi0 = int((qh >> j) & 1) << 4, hi1 = int((qh >> (j + 16)) & 1) << 4;
    out.put(j, float((b[8 + j] & 0xF) | hi0) * d + m);
    out.put(j + 16, float((b[8 + j] >> 4) | hi1) * d + m);
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q8_0(const uint8_t* b, const Out& out) {
  const float d = half_at(b);
  for (int j = 0; j < 32; ++j) out.put(j, float(int8_t(b[2 + j])) * d);
}

// --- K family (256 values per super-block) ---------------------------------------------------------------------
// Sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K), each with a small integer scale (and min) relative to
// the super-block's fp16 d (and dmin).

// Q4_K/Q5_K's eight 6-bit scales and mins in 12 bytes: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales)
// and 4-7 (mins); sub-blocks 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the top bits of 0-7.
MD_HOST_DEVICE inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q3_K's sixteen 6-bit scales (stored +32) in 12 bytes: low nibbles of sub-blocks 0-7 in the low nibbles of
// bytes 0-7, of 8-15 in their high nibbles; the top 2 bits of sub-block i in byte 8 + i % 4 at bit 2 * (i / 4).
MD_HOST_DEVICE inline int scale_k3(int i, const uint8_t* s) {
  const int lo = i < 8 ? s[i] & 0xF : s[i - 8] >> 4;
  const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

template <class Out>
MD_HOST_DEVICE inline void dq_q2_k(const uint8_t* b, const Out& out) {
  const uint8_t *scales = b, *qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, r = e % 128, j = r / 32, l = r % 32;  // l: 0-15 first half, 16-31 second
    const int q = (qs[n * 32 + l] >> (2 * j)) & 3;
    const uint8_t sc = scales[e / 16];
    out.put(e, d * float(sc & 0xF) * float(q) - dmin * float(sc >> 4));
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q3_k(const uint8_t* b, const Out& out) {
  const uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
  const float d = half_at(b + 108);
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, r = e % 128, j = r / 32, l = r % 32;
    const int low = (qs[n * 32 + l] >> (2 * j)) & 3;
    const int high = (hmask[e % 32] >> (e / 32)) & 1;
    out.put(e, d * float(scale_k3(e / 16, scales)) * float(low - (high ? 0 : 4)));
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q4_k(const uint8_t* b, const Out& out) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  // 64 values per step: sub-block 2c in the low nibbles of 32 bytes, 2c + 1 in their high nibbles.
  for (int c = 0; c < 4; ++c) {
    const uint8_t* qs = b + 16 + 32 * c;
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * c, scales, &sc0, &m0);
    scale_min_k4(2 * c + 1, scales, &sc1, &m1);
    const float d0 = d * float(sc0), min0 = dmin * float(m0), d1 = d * float(sc1), min1 = dmin * float(m1);
    for (int r = 0; r < 32; ++r) out.put(64 * c + r, d0 * float(qs[r] & 0xF) - min0);
    for (int r = 0; r < 32; ++r) out.put(64 * c + 32 + r, d1 * float(qs[r] >> 4) - min1);
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q5_k(const uint8_t* b, const Out& out) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
  for (int e = 0; e < 256; ++e) {
    const int c = e / 64, r = e % 64;
    int sc, m;
    scale_min_k4(e / 32, scales, &sc, &m);
    const int low = r < 32 ? qs[c * 32 + r] & 0xF : qs[c * 32 + r - 32] >> 4;
    const int q = low | (((qh[e % 32] >> (e / 32)) & 1) << 4);
    out.put(e, d * float(sc) * float(q) - dmin * float(m));
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q6_k(const uint8_t* b, const Out& out) {
  const uint8_t *ql = b, *qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, r = e % 128, k = r / 32, l = r % 32;
    const uint8_t lo = ql[n * 64 + l + (k & 1) * 32];
    const int q = ((k < 2 ? lo & 0xF : lo >> 4) | (((qh[n * 32 + l] >> (2 * k)) & 3) << 4)) - 32;
    out.put(e, d * float(scales[e / 16]) * float(q));
  }
}
template <class Out>
MD_HOST_DEVICE inline void dq_q8_k(const uint8_t* b, const Out& out) {
  const float d = bits_to_float(u32_at(b));  // a float32 scale, not a half
  for (int e = 0; e < 256; ++e) out.put(e, d * float(int8_t(b[4 + e])));
}

}  // namespace meshdit::quant_blocks
