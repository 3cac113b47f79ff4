#include "backend/cpu/quant.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "backend/quant_blocks.h"
#include "core/dtype.h"

namespace meshdit {
namespace {

constexpr int64_t kQK = 32;    // elements per block of the Q4_0 ... Q8_0 family
constexpr int64_t kQKK = 256;  // elements per super-block of the K family

struct TypeInfo {
  uint32_t id;
  const char* name;
  int64_t block;
  size_t bytes;
};

// Block sizes and bytes as ggml's structs: a half is 2 bytes, K-family sub-block scales as packed.
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4},
    {1, "F16", 1, 2},
    {2, "Q4_0", kQK, 2 + 16},
    {3, "Q4_1", kQK, 4 + 16},
    {6, "Q5_0", kQK, 2 + 4 + 16},
    {7, "Q5_1", kQK, 4 + 4 + 16},
    {8, "Q8_0", kQK, 2 + 32},
    {10, "Q2_K", kQKK, 16 + 64 + 4},        // scales[16], qs[64], d, dmin
    {11, "Q3_K", kQKK, 32 + 64 + 12 + 2},   // hmask[32], qs[64], scales[12], d
    {12, "Q4_K", kQKK, 4 + 12 + 128},       // d, dmin, scales[12], qs[128]
    {13, "Q5_K", kQKK, 4 + 12 + 32 + 128},  // d, dmin, scales[12], qh[32], qs[128]
    {14, "Q6_K", kQKK, 128 + 64 + 16 + 2},  // ql[128], qh[64], scales[16], d
    {15, "Q8_K", kQKK, 4 + 256 + 2 * 16},   // float d, qs[256], int16 bsums[16]
    {24, "I8", 1, 1},
    {25, "I16", 1, 2},
    {26, "I32", 1, 4},
    {27, "I64", 1, 8},
    {28, "F64", 1, 8},
    {30, "BF16", 1, 2},
};

// ggml's names of the ids meshdit does not read, for messages.
const char* other_ggml_name(uint32_t id) {
  switch (id) {
    case 4:
      return "Q4_2 (removed)";
    case 5:
      return "Q4_3 (removed)";
    case 9:
      return "Q8_1";
    case 16:
      return "IQ2_XXS";
    case 17:
      return "IQ2_XS";
    case 18:
      return "IQ3_XXS";
    case 19:
      return "IQ1_S";
    case 20:
      return "IQ4_NL";
    case 21:
      return "IQ3_S";
    case 22:
      return "IQ2_S";
    case 23:
      return "IQ4_XS";
    case 29:
      return "IQ1_M";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    case 39:
      return "MXFP4";
    default:
      return "?";
  }
}

const TypeInfo* info_of(uint32_t id) {
  for (const auto& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

const TypeInfo& info(QuantType t) {
  const TypeInfo* i = info_of(uint32_t(t));
  MD_CHECK(i != nullptr, "unknown QuantType " + std::to_string(uint32_t(t)));
  return *i;
}

float h2f(const uint8_t* p) { return quant_blocks::half_at(p); }
void f2h(float f, uint8_t* p) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// `blocks` blocks of `block` values and `bytes` bytes each, decoded one after the other: the decoder is picked
// once per row and inlined into the loop.
template <void (*Decode)(const uint8_t*, const quant_blocks::FloatSink&)>
void decode_blocks(const uint8_t* p, float* dst, int64_t blocks, int64_t block, size_t bytes) {
  for (int64_t i = 0; i < blocks; ++i) Decode(p + size_t(i) * bytes, quant_blocks::FloatSink{dst + i * block});
}

// --- Q4_0 ... Q8_0 -------------------------------------------------------------------------------------------
// The decoders are quant_blocks.h's (shared with the CUDA backend); the encoders round as ggml's reference
// quantizers do.

// The value of largest magnitude, with its sign (ggml's symmetric quantizers map it to -2^(bits-1)).
float signed_absmax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

void q_q4_0(const float* x, uint8_t* b) {
  const float d = signed_absmax(x, 32) / -8, id = d != 0 ? 1 / d : 0;
  f2h(d, b);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f))), q1 = std::min(15, int(int8_t(x[j + 16] * id + 8.5f)));
    b[2 + j] = uint8_t(q0 | (q1 << 4));
  }
}
void q_q4_1(const float* x, uint8_t* b) {
  const float mn = *std::min_element(x, x + 32), mx = *std::max_element(x, x + 32);
  const float d = (mx - mn) / 15, id = d != 0 ? 1 / d : 0;
  f2h(d, b);
  f2h(mn, b + 2);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, int(int8_t((x[j] - mn) * id + 0.5f)));
    const int q1 = std::min(15, int(int8_t((x[j + 16] - mn) * id + 0.5f)));
    b[4 + j] = uint8_t(q0 | (q1 << 4));
  }
}
void q_q5_0(const float* x, uint8_t* b) {
  const float d = signed_absmax(x, 32) / -16, id = d != 0 ? 1 / d : 0;
  f2h(d, b);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(31, int(int8_t(x[j] * id + 16.5f))), q1 = std::min(31, int(int8_t(x[j + 16] * id + 16.5f)));
    b[6 + j] = uint8_t((q0 & 0xF) | ((q1 & 0xF) << 4));
    qh |= uint32_t((q0 >> 4) & 1) << j | uint32_t((q1 >> 4) & 1) << (j + 16);
  }
  std::memcpy(b + 2, &qh, 4);
}
void q_q5_1(const float* x, uint8_t* b) {
  const float mn = *std::min_element(x, x + 32), mx = *std::max_element(x, x + 32);
  const float d = (mx - mn) / 31, id = d != 0 ? 1 / d : 0;
  f2h(d, b);
  f2h(mn, b + 2);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(31, int(uint8_t((x[j] - mn) * id + 0.5f)));
    const int q1 = std::min(31, int(uint8_t((x[j + 16] - mn) * id + 0.5f)));
    b[8 + j] = uint8_t((q0 & 0xF) | ((q1 & 0xF) << 4));
    qh |= uint32_t((q0 >> 4) & 1) << j | uint32_t((q1 >> 4) & 1) << (j + 16);
  }
  std::memcpy(b + 4, &qh, 4);
}
void q_q8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127, id = d != 0 ? 1 / d : 0;
  f2h(d, b);
  for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(int8_t(std::lround(x[j] * id)));
}

// --- K family --------------------------------------------------------------------------------------------------
// A super-block of 256 values: sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K), each with a small integer
// scale (and min) relative to the super-block's fp16 d (and dmin).

// Q4_K/Q5_K's scales and mins packed as quant_blocks::scale_min_k4 reads them.
void pack_scale_min_k4(const int* sc, const int* m, uint8_t* q) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] |= uint8_t(sc[j] & 63);
      q[j + 4] |= uint8_t(m[j] & 63);
    } else {
      q[j + 4] = uint8_t((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      q[j - 4] |= uint8_t((sc[j] >> 4) << 6);
      q[j] |= uint8_t((m[j] >> 4) << 6);
    }
  }
}

// An asymmetric fit of n values to integers 0..nmax: x ~ scale * q - min with min >= 0 (ggml's K types subtract
// a non-negative min). Starts from the range and tries a few narrower ones (clipping the extremes can lower the
// squared error), keeping the best.
void fit_scale_min(const float* x, int n, int nmax, float* scale, float* min) {
  float lo = 0, hi = x[0];
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  *min = -lo;
  *scale = hi > lo ? (hi - lo) / float(nmax) : 0;
  if (*scale == 0) return;
  float best = INFINITY;
  for (int step = 0; step <= 8; ++step) {
    const float s = (hi - lo) / float(nmax) * (1.0f - 0.025f * float(step));
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const int q = std::clamp(int(std::lround((x[i] - lo) / s)), 0, nmax);
      const float dx = s * float(q) + lo - x[i];
      err += dx * dx;
    }
    if (err < best) {
      best = err;
      *scale = s;
    }
  }
}

// A symmetric fit to integers -nmax-1..nmax (Q3_K, Q6_K): the signed extreme maps to -(nmax+1), as ggml does.
float fit_scale_sym(const float* x, int n, int nmax) {
  const float max = signed_absmax(x, n);
  return max / -float(nmax + 1);
}

// Integer scales for per-sub-block float ones: the super-block factor is the largest over `levels`.
float super_scale(const float* s, int n, int levels) {
  float mx = 0;
  for (int i = 0; i < n; ++i) mx = std::max(mx, std::fabs(s[i]));
  return mx / float(levels);
}

int quant_level(float v, float d, int lo, int hi) { return d == 0 ? 0 : std::clamp(int(std::lround(v / d)), lo, hi); }

void q_q2_k(const float* x, uint8_t* b) {
  float sc[16], mn[16];
  for (int i = 0; i < 16; ++i) fit_scale_min(x + 16 * i, 16, 3, &sc[i], &mn[i]);
  const float d = super_scale(sc, 16, 15), dmin = super_scale(mn, 16, 15);
  f2h(d, b + 80);
  f2h(dmin, b + 82);
  const float dq = h2f(b + 80), dmq = h2f(b + 82);
  std::memset(b + 16, 0, 64);
  for (int i = 0; i < 16; ++i) {
    const int ls = quant_level(sc[i], dq, 0, 15), lm = quant_level(mn[i], dmq, 0, 15);
    b[i] = uint8_t(ls | (lm << 4));
    const float dl = dq * float(ls), ml = dmq * float(lm);
    for (int k = 0; k < 16; ++k) {
      const int e = 16 * i + k;
      const int q = quant_level(x[e] + ml, dl, 0, 3);
      const int n = e / 128, r = e % 128, j = r / 32, l = r % 32;
      b[16 + n * 32 + l] |= uint8_t(q << (2 * j));
    }
  }
}
void q_q3_k(const float* x, uint8_t* b) {
  float sc[16];
  for (int i = 0; i < 16; ++i) sc[i] = fit_scale_sym(x + 16 * i, 16, 3);
  // Scales are signed (-32..31): the one of largest magnitude maps to -32, as the values' extreme does to -4.
  const float d = signed_absmax(sc, 16) / -32;
  f2h(d, b + 108);
  const float dq = h2f(b + 108);
  uint8_t* scales = b + 96;
  std::memset(b, 0, 108);
  for (int i = 0; i < 16; ++i) {
    const int ls = quant_level(sc[i], dq, -32, 31);
    const int u = ls + 32;
    if (i < 8)
      scales[i] |= uint8_t(u & 0xF);
    else
      scales[i - 8] |= uint8_t((u & 0xF) << 4);
    scales[8 + i % 4] |= uint8_t((u >> 4) << (2 * (i / 4)));
    const float dl = dq * float(ls);
    for (int k = 0; k < 16; ++k) {
      const int e = 16 * i + k;
      const int q = quant_level(x[e], dl, -4, 3) + 4;  // 0..7: 2 low bits in qs, the third in hmask
      const int n = e / 128, r = e % 128, j = r / 32, l = r % 32;
      b[32 + n * 32 + l] |= uint8_t((q & 3) << (2 * j));
      if (q & 4) b[e % 32] |= uint8_t(1 << (e / 32));
    }
  }
}
// Q4_K and Q5_K share everything but the bits per value (nmax 15 or 31) and where the fifth bit goes.
void q_q45_k(const float* x, uint8_t* b, int nmax) {
  float sc[8], mn[8];
  for (int i = 0; i < 8; ++i) fit_scale_min(x + 32 * i, 32, nmax, &sc[i], &mn[i]);
  const float d = super_scale(sc, 8, 63), dmin = super_scale(mn, 8, 63);
  f2h(d, b);
  f2h(dmin, b + 2);
  const float dq = h2f(b), dmq = h2f(b + 2);
  int ls[8], lm[8];
  for (int i = 0; i < 8; ++i) {
    ls[i] = quant_level(sc[i], dq, 0, 63);
    lm[i] = quant_level(mn[i], dmq, 0, 63);
  }
  pack_scale_min_k4(ls, lm, b + 4);
  const bool five = nmax == 31;
  uint8_t* qh = b + 16;
  uint8_t* qs = five ? b + 48 : b + 16;
  std::memset(b + 16, 0, five ? 160 : 128);
  for (int e = 0; e < 256; ++e) {
    const int i = e / 32, c = e / 64, r = e % 64;
    const int q = quant_level(x[e] + dmq * float(lm[i]), dq * float(ls[i]), 0, nmax);
    qs[c * 32 + r % 32] |= uint8_t(r < 32 ? (q & 0xF) : (q & 0xF) << 4);
    if (five && (q & 16)) qh[e % 32] |= uint8_t(1 << (e / 32));
  }
}
void q_q6_k(const float* x, uint8_t* b) {
  float sc[16];
  for (int i = 0; i < 16; ++i) sc[i] = fit_scale_sym(x + 16 * i, 16, 31);
  const float d = signed_absmax(sc, 16) / -128;
  f2h(d, b + 208);
  const float dq = h2f(b + 208);
  std::memset(b, 0, 208);
  auto* scales = reinterpret_cast<int8_t*>(b + 192);
  for (int i = 0; i < 16; ++i) scales[i] = int8_t(quant_level(sc[i], dq, -128, 127));
  for (int e = 0; e < 256; ++e) {
    const int q = quant_level(x[e], dq * float(scales[e / 16]), -32, 31) + 32;
    const int n = e / 128, r = e % 128, k = r / 32, l = r % 32;
    b[n * 64 + l + (k & 1) * 32] |= uint8_t(k < 2 ? (q & 0xF) : (q & 0xF) << 4);
    b[128 + n * 32 + l] |= uint8_t((q >> 4) << (2 * k));
  }
}
void q_q8_k(const float* x, uint8_t* b) {
  const float max = signed_absmax(x, 256);
  const float d = max / -128, id = d != 0 ? 1 / d : 0;
  std::memcpy(b, &d, 4);
  int16_t bsums[16] = {};
  for (int e = 0; e < 256; ++e) {
    const int q = std::min(127, int(std::lround(x[e] * id)));
    b[4 + e] = uint8_t(int8_t(q));
    bsums[e / 16] = int16_t(bsums[e / 16] + q);
  }
  std::memcpy(b + 260, bsums, sizeof bsums);
}

}  // namespace

bool quant_type_known(uint32_t id) { return info_of(id) != nullptr; }

const char* quant_type_name(uint32_t id) {
  const TypeInfo* i = info_of(id);
  return i ? i->name : other_ggml_name(id);
}

bool quant_type_from_name(const std::string& name, QuantType* out) {
  std::string up = name;
  for (auto& ch : up) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  for (const auto& t : kTypes)
    if (up == t.name) {
      *out = QuantType(t.id);
      return true;
    }
  return false;
}

int64_t quant_block_size(QuantType t) { return info(t).block; }
size_t quant_block_bytes(QuantType t) { return info(t).bytes; }
bool quant_is_block(QuantType t) { return info(t).block > 1; }

uint64_t quant_row_bytes(QuantType t, int64_t n) {
  const TypeInfo& i = info(t);
  return uint64_t(n / i.block) * i.bytes;
}

void dequantize_row(QuantType t, const void* src, float* dst, int64_t n) {
  const TypeInfo& ti = info(t);
  MD_CHECK(n % ti.block == 0, "dequantize_row: a row of " + std::to_string(n) + " is not whole " + ti.name + " blocks");
  const auto* p = static_cast<const uint8_t*>(src);
  switch (t) {
    case QuantType::F32:
      std::memcpy(dst, p, size_t(n) * 4);
      return;
    case QuantType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = h2f(p + 2 * i);
      return;
    case QuantType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case QuantType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        dst[i] = float(v);
      }
      return;
    default:
      break;
  }
  void (*fn)(const uint8_t*, float*, int64_t, int64_t, size_t) = nullptr;
  switch (t) {
    case QuantType::Q4_0:
      fn = decode_blocks<quant_blocks::dq_q4_0<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q4_1:
      fn = decode_blocks<quant_blocks::dq_q4_1<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q5_0:
      fn = decode_blocks<quant_blocks::dq_q5_0<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q5_1:
      fn = decode_blocks<quant_blocks::dq_q5_1<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q8_0:
      fn = decode_blocks<quant_blocks::dq_q8_0<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q2_K:
      fn = decode_blocks<quant_blocks::dq_q2_k<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q3_K:
      fn = decode_blocks<quant_blocks::dq_q3_k<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q4_K:
      fn = decode_blocks<quant_blocks::dq_q4_k<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q5_K:
      fn = decode_blocks<quant_blocks::dq_q5_k<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q6_K:
      fn = decode_blocks<quant_blocks::dq_q6_k<quant_blocks::FloatSink>>;
      break;
    case QuantType::Q8_K:
      fn = decode_blocks<quant_blocks::dq_q8_k<quant_blocks::FloatSink>>;
      break;
    default:
      fatal(__FILE__, __LINE__, std::string("dequantize_row: ") + ti.name + " is not a float type");
  }
  fn(p, dst, n / ti.block, ti.block, ti.bytes);
}

void quantize_row(QuantType t, const float* src, void* dst, int64_t n) {
  const TypeInfo& ti = info(t);
  MD_CHECK(n % ti.block == 0, "quantize_row: a row of " + std::to_string(n) + " is not whole " + ti.name + " blocks");
  auto* p = static_cast<uint8_t*>(dst);
  switch (t) {
    case QuantType::F32:
      std::memcpy(p, src, size_t(n) * 4);
      return;
    case QuantType::F16:
      for (int64_t i = 0; i < n; ++i) f2h(src[i], p + 2 * i);
      return;
    case QuantType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    case QuantType::F64:
      for (int64_t i = 0; i < n; ++i) {
        const double v = src[i];
        std::memcpy(p + 8 * i, &v, 8);
      }
      return;
    default:
      break;
  }
  void (*fn)(const float*, uint8_t*) = nullptr;
  switch (t) {
    case QuantType::Q4_0:
      fn = q_q4_0;
      break;
    case QuantType::Q4_1:
      fn = q_q4_1;
      break;
    case QuantType::Q5_0:
      fn = q_q5_0;
      break;
    case QuantType::Q5_1:
      fn = q_q5_1;
      break;
    case QuantType::Q8_0:
      fn = q_q8_0;
      break;
    case QuantType::Q2_K:
      fn = q_q2_k;
      break;
    case QuantType::Q3_K:
      fn = q_q3_k;
      break;
    case QuantType::Q4_K:
      fn = [](const float* x, uint8_t* b) { q_q45_k(x, b, 15); };
      break;
    case QuantType::Q5_K:
      fn = [](const float* x, uint8_t* b) { q_q45_k(x, b, 31); };
      break;
    case QuantType::Q6_K:
      fn = q_q6_k;
      break;
    case QuantType::Q8_K:
      fn = q_q8_k;
      break;
    default:
      fatal(__FILE__, __LINE__, std::string("quantize_row: ") + ti.name + " is not a float type");
  }
  for (int64_t i = 0; i < n / ti.block; ++i) fn(src + i * ti.block, p + size_t(i) * ti.bytes);
}

}  // namespace meshdit
