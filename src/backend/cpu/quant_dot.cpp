#include "backend/cpu/quant_dot.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_info.h"
#include "backend/cpu/isa_choice.h"
#include "core/dtype.h"

namespace meshdit::cpu {
namespace {

constexpr size_t kQ8_0Bytes = 2 + 32;            // fp16 d, 32 int8
constexpr size_t kQ4_KBytes = 2 + 2 + 12 + 128;  // fp16 d, fp16 dmin, 6-bit scales and mins, 256 nibbles
constexpr int64_t kQ4_KValues = 256;

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Q4_K's 6-bit scale and min of sub-block j (of 8), as ggml packs them in 12 bytes.
void scale_min(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// ---- portable: the definition the vector kernels are tested against ----------------------------------------

void q8_0_portable(const uint8_t* w, int64_t K, const int8_t* q, const float* d, const int32_t*, int64_t M,
                   float* out) {
  const int64_t nb = K / kQ8Block;
  for (int64_t m = 0; m < M; ++m) {
    float acc = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + size_t(b) * kQ8_0Bytes;
      const int8_t* qw = reinterpret_cast<const int8_t*>(blk + 2);
      const int8_t* qx = q + m * K + b * kQ8Block;
      int32_t s = 0;
      for (int i = 0; i < 32; ++i) s += int32_t(qw[i]) * int32_t(qx[i]);
      acc += half_at(blk) * d[m * nb + b] * float(s);
    }
    out[m] = acc;
  }
}

// Sub-block j of a Q4_K super-block: values d * sc_j * q - dmin * m_j with q in 0..15, so its dot with an
// activation block (dx, qx) is dx * (d * sc_j * sum(q qx) - dmin * m_j * sum(qx)).
void q4_k_portable(const uint8_t* w, int64_t K, const int8_t* q, const float* d, const int32_t* sums, int64_t M,
                   float* out) {
  const int64_t nsb = K / kQ4_KValues, nb = K / kQ8Block;
  for (int64_t m = 0; m < M; ++m) {
    float acc = 0;
    for (int64_t s = 0; s < nsb; ++s) {
      const uint8_t* blk = w + size_t(s) * kQ4_KBytes;
      const float dd = half_at(blk), dmin = half_at(blk + 2);
      const uint8_t* qs = blk + 16;
      for (int j = 0; j < 8; ++j) {
        int sc, mn;
        scale_min(j, blk + 4, &sc, &mn);
        const int64_t b = s * 8 + j;
        const int8_t* qx = q + m * K + b * kQ8Block;
        const uint8_t* nib = qs + (j / 2) * 32;
        int32_t dot = 0;
        for (int i = 0; i < 32; ++i) dot += int32_t(j % 2 ? nib[i] >> 4 : nib[i] & 0xF) * int32_t(qx[i]);
        acc += d[m * nb + b] * (dd * float(sc) * float(dot) - dmin * float(mn) * float(sums[m * nb + b]));
      }
    }
    out[m] = acc;
  }
}

// ---- x86 vector kernels: one body, three ways to take a dot product of 32 u8 x s8 into 8 int32 lanes ---------

#define MESHDIT_HSUM256(v)                                                                \
  [&] {                                                                                   \
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); \
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                              \
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));                            \
  }()

// Rows of x four at a time, so each weight block is loaded once for four rows.
#define MESHDIT_QUANT_DOT_KERNELS(SUFFIX, TARGET, DOT)                                                              \
  __attribute__((target(TARGET))) void q8_0_##SUFFIX(const uint8_t* w, int64_t K, const int8_t* q, const float* d,  \
                                                     const int32_t*, int64_t M, float* out) {                       \
    const int64_t nb = K / kQ8Block;                                                                                \
    for (int64_t m0 = 0; m0 < M; m0 += 4) {                                                                         \
      const int64_t mr = std::min<int64_t>(4, M - m0);                                                              \
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};         \
      for (int64_t b = 0; b < nb; ++b) {                                                                            \
        const uint8_t* blk = w + size_t(b) * kQ8_0Bytes;                                                            \
        const float dw = half_at(blk);                                                                              \
        const __m256i qw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));                           \
        const __m256i aw = _mm256_sign_epi8(qw, qw); /* |w| as u8; the sign moves to x */                           \
        for (int64_t r = 0; r < mr; ++r) {                                                                          \
          const int64_t m = m0 + r;                                                                                 \
          const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + m * K + b * kQ8Block));        \
          const __m256i p = DOT(aw, _mm256_sign_epi8(qx, qw));                                                      \
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[m * nb + b]), _mm256_cvtepi32_ps(p), acc[r]);              \
        }                                                                                                           \
      }                                                                                                             \
      for (int64_t r = 0; r < mr; ++r) out[m0 + r] = MESHDIT_HSUM256(acc[r]);                                       \
    }                                                                                                               \
  }                                                                                                                 \
  __attribute__((target(TARGET))) void q4_k_##SUFFIX(const uint8_t* w, int64_t K, const int8_t* q, const float* d,  \
                                                     const int32_t* sums, int64_t M, float* out) {                  \
    const int64_t nsb = K / kQ4_KValues, nb = K / kQ8Block;                                                         \
    const __m256i low = _mm256_set1_epi8(0x0F);                                                                     \
    for (int64_t m0 = 0; m0 < M; m0 += 4) {                                                                         \
      const int64_t mr = std::min<int64_t>(4, M - m0);                                                              \
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};         \
      float mins[4] = {0, 0, 0, 0};                                                                                 \
      for (int64_t s = 0; s < nsb; ++s) {                                                                           \
        const uint8_t* blk = w + size_t(s) * kQ4_KBytes;                                                            \
        const float dd = half_at(blk), dmin = half_at(blk + 2);                                                     \
        for (int c = 0; c < 4; ++c) {                                                                               \
          const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + c * 32));            \
          const __m256i lo = _mm256_and_si256(bytes, low);                                                          \
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);                                    \
          int sc0, mn0, sc1, mn1;                                                                                   \
          scale_min(2 * c, blk + 4, &sc0, &mn0);                                                                    \
          scale_min(2 * c + 1, blk + 4, &sc1, &mn1);                                                                \
          const int64_t b0 = s * 8 + 2 * c, b1 = b0 + 1;                                                            \
          for (int64_t r = 0; r < mr; ++r) {                                                                        \
            const int64_t m = m0 + r;                                                                               \
            const int8_t* qx = q + m * K;                                                                           \
            const __m256i p0 = DOT(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b0 * kQ8Block)));   \
            const __m256i p1 = DOT(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + b1 * kQ8Block)));   \
            const float dx0 = d[m * nb + b0], dx1 = d[m * nb + b1];                                                 \
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dd * float(sc0) * dx0), _mm256_cvtepi32_ps(p0), acc[r]);        \
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dd * float(sc1) * dx1), _mm256_cvtepi32_ps(p1), acc[r]);        \
            mins[r] +=                                                                                              \
                dmin * (float(mn0) * dx0 * float(sums[m * nb + b0]) + float(mn1) * dx1 * float(sums[m * nb + b1])); \
          }                                                                                                         \
        }                                                                                                           \
      }                                                                                                             \
      for (int64_t r = 0; r < mr; ++r) out[m0 + r] = MESHDIT_HSUM256(acc[r]) - mins[r];                             \
    }                                                                                                               \
  }

// u8 x s8 products summed in pairs to int16 (at most 2 * 255 * 127: no saturation for |w| <= 128, |x| <= 127),
// then in pairs again to int32.
#define MESHDIT_DOT_AVX2(a, s) _mm256_madd_epi16(_mm256_maddubs_epi16(a, s), _mm256_set1_epi16(1))
#define MESHDIT_DOT_AVXVNNI(a, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, s)
#define MESHDIT_DOT_AVX512VNNI(a, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, s)

MESHDIT_QUANT_DOT_KERNELS(avx2, "avx2,fma", MESHDIT_DOT_AVX2)
MESHDIT_QUANT_DOT_KERNELS(avxvnni, "avx2,fma,avxvnni", MESHDIT_DOT_AVXVNNI)
MESHDIT_QUANT_DOT_KERNELS(avx512vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", MESHDIT_DOT_AVX512VNNI)

using Kernel = void (*)(const uint8_t*, int64_t, const int8_t*, const float*, const int32_t*, int64_t, float*);
struct Kernels {
  Kernel q8_0, q4_k;
};
constexpr Kernels kPortable{q8_0_portable, q4_k_portable};
constexpr Kernels kAvx2{q8_0_avx2, q4_k_avx2};
constexpr Kernels kAvxVnni{q8_0_avxvnni, q4_k_avxvnni};
constexpr Kernels kAvx512Vnni{q8_0_avx512vnni, q4_k_avx512vnni};

// From cpuid (cpu_info.h), not __builtin_cpu_supports: clang 14 does not know AVX-VNNI's name there.
bool cpu_runs(QuantDotIsa isa) {
  const CpuInfo& c = cpu_info();
  const bool avx2 = c.avx2 && c.fma;
  switch (isa) {
    case QuantDotIsa::Portable:
      return true;
    case QuantDotIsa::Avx2:
      return avx2;
    case QuantDotIsa::AvxVnni:
      return avx2 && c.avx_vnni;
    case QuantDotIsa::Avx512Vnni:
      return avx2 && c.avx512vl && c.avx512_vnni;
  }
  return false;
}

IsaChoice<QuantDotIsa>& choice() {
  static IsaChoice<QuantDotIsa> c(best_quant_dot_isa, cpu_runs, quant_dot_isa_name, "quantized dot products");
  return c;
}

const Kernels& kernels() {
  switch (quant_dot_isa()) {
    case QuantDotIsa::Avx512Vnni:
      return kAvx512Vnni;
    case QuantDotIsa::AvxVnni:
      return kAvxVnni;
    case QuantDotIsa::Avx2:
      return kAvx2;
    case QuantDotIsa::Portable:
      break;
  }
  return kPortable;
}

}  // namespace

void quantize_row_q8(const float* x, int64_t K, int8_t* q, float* d, int32_t* sums) {
  for (int64_t b = 0; b < K / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0;
    for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float db = amax / 127, id = db != 0 ? 1 / db : 0;
    int32_t s = 0;
    for (int i = 0; i < kQ8Block; ++i) {
      const int v = int(std::nearbyint(xb[i] * id));
      q[b * kQ8Block + i] = int8_t(v);
      s += v;
    }
    d[b] = db;
    sums[b] = s;
  }
}

bool quant_dot_supported(QuantType t) { return t == QuantType::Q8_0 || t == QuantType::Q4_K; }

QuantDotIsa best_quant_dot_isa() {
  for (QuantDotIsa isa : {QuantDotIsa::Avx512Vnni, QuantDotIsa::AvxVnni, QuantDotIsa::Avx2})
    if (cpu_runs(isa)) return isa;
  return QuantDotIsa::Portable;
}

QuantDotIsa quant_dot_isa() { return choice().get(); }

Status set_quant_dot_isa(QuantDotIsa isa) { return choice().set(isa); }

std::string quant_dot_isa_name(QuantDotIsa isa) {
  switch (isa) {
    case QuantDotIsa::Avx512Vnni:
      return "avx512_vnni";
    case QuantDotIsa::AvxVnni:
      return "avx_vnni";
    case QuantDotIsa::Avx2:
      return "avx2";
    case QuantDotIsa::Portable:
      break;
  }
  return "portable";
}

void quant_dot_rows(QuantType t, const uint8_t* w, int64_t K, const int8_t* q, const float* d, const int32_t* sums,
                    int64_t M, float* out) {
  MD_CHECK(quant_dot_supported(t) && K % (t == QuantType::Q4_K ? kQ4_KValues : kQ8Block) == 0,
           std::string("quant_dot_rows: ") + quant_type_name(t) + " rows of " + std::to_string(K));
  const Kernels& k = kernels();
  (t == QuantType::Q8_0 ? k.q8_0 : k.q4_k)(w, K, q, d, sums, M, out);
}

}  // namespace meshdit::cpu
