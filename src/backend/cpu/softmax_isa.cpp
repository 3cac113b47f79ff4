#include "backend/cpu/softmax_isa.h"

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the unused merge source of their masked
// builtins, and -W(maybe-)uninitialized reports it wherever they are inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cmath>

#include "backend/cpu/isa_choice.h"
#include "backend/cpu/vec_math.h"

namespace meshdit::cpu {
namespace {

// fast_exp's Cephes constants (vec_math.h), so that every ISA rounds the same way up to FMA contraction.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

float max_portable(const float* x, int64_t n, float init) { return max_of(x, n, init); }
float exp_sub_sum_portable(float* x, int64_t n, float sub) { return exp_sub_sum(x, n, sub); }

__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // also true for -inf; NaN stays NaN below
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) float max_avx2(const float* x, int64_t n, float init) {
  __m256 a = _mm256_set1_ps(init), b = a;
  int64_t i = 0;
  // MAXPS(v, acc) = v > acc ? v : acc: a NaN in x leaves acc as it was, as std::max(acc, v) would.
  for (; i + 16 <= n; i += 16) {
    a = _mm256_max_ps(_mm256_loadu_ps(x + i), a);
    b = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), b);
  }
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, a);
  _mm256_store_ps(lanes + 8, b);
  float m = init;
  for (float v : lanes) m = m < v ? v : m;
  for (; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

__attribute__((target("avx2,fma"))) float exp_sub_sum_avx2(float* x, int64_t n, float sub) {
  const __m256 s = _mm256_set1_ps(sub);
  __m256 a = _mm256_setzero_ps(), b = a;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    const __m256 e1 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
    _mm256_storeu_ps(x + i, e0);
    _mm256_storeu_ps(x + i + 8, e1);
    a = _mm256_add_ps(a, e0);
    b = _mm256_add_ps(b, e1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(a, b));
  float t = 0;
  for (; i < n; ++i) t += (x[i] = fast_exp(x[i] - sub));
  for (float v : lanes) t += v;
  return t;
}

__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // false only below -87 (and -inf)
  x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.0f));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(keep, y, _mm512_castsi512_ps(e));
}

__attribute__((target("avx512f"))) float max_avx512(const float* x, int64_t n, float init) {
  __m512 a = _mm512_set1_ps(init), b = a;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a = _mm512_max_ps(_mm512_loadu_ps(x + i), a);
    b = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), b);
  }
  alignas(64) float lanes[32];
  _mm512_store_ps(lanes, a);
  _mm512_store_ps(lanes + 16, b);
  float m = init;
  for (float v : lanes) m = m < v ? v : m;
  for (; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

__attribute__((target("avx512f"))) float exp_sub_sum_avx512(float* x, int64_t n, float sub) {
  const __m512 s = _mm512_set1_ps(sub);
  __m512 a = _mm512_setzero_ps(), b = a;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    const __m512 e1 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), s));
    _mm512_storeu_ps(x + i, e0);
    _mm512_storeu_ps(x + i + 16, e1);
    a = _mm512_add_ps(a, e0);
    b = _mm512_add_ps(b, e1);
  }
  if (i + 16 <= n) {
    const __m512 e0 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    _mm512_storeu_ps(x + i, e0);
    a = _mm512_add_ps(a, e0);
    i += 16;
  }
  if (i < n) {  // the tail through a mask: masked-off lanes load as -inf, whose exp adds 0
    const __mmask16 k = __mmask16((1u << (n - i)) - 1u);
    const __m512 e0 = exp_avx512(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i), s));
    _mm512_mask_storeu_ps(x + i, k, e0);
    b = _mm512_add_ps(b, e0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}

constexpr SoftmaxKernels kPortable{max_portable, exp_sub_sum_portable};
constexpr SoftmaxKernels kAvx2{max_avx2, exp_sub_sum_avx2};
constexpr SoftmaxKernels kAvx512{max_avx512, exp_sub_sum_avx512};

bool cpu_runs(SoftmaxIsa isa) {
  switch (isa) {
    case SoftmaxIsa::Portable:
      return true;
    case SoftmaxIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SoftmaxIsa::Avx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
}

IsaChoice<SoftmaxIsa>& choice() {
  static IsaChoice<SoftmaxIsa> c(best_softmax_isa, cpu_runs, softmax_isa_name, "softmax kernels");
  return c;
}

}  // namespace

SoftmaxIsa best_softmax_isa() {
  if (cpu_runs(SoftmaxIsa::Avx512)) return SoftmaxIsa::Avx512;
  if (cpu_runs(SoftmaxIsa::Avx2)) return SoftmaxIsa::Avx2;
  return SoftmaxIsa::Portable;
}

SoftmaxIsa softmax_isa() { return choice().get(); }

const SoftmaxKernels& softmax_kernels() {
  switch (softmax_isa()) {
    case SoftmaxIsa::Avx512:
      return kAvx512;
    case SoftmaxIsa::Avx2:
      return kAvx2;
    case SoftmaxIsa::Portable:
      break;
  }
  return kPortable;
}

Status set_softmax_isa(SoftmaxIsa isa) { return choice().set(isa); }

std::string softmax_isa_name(SoftmaxIsa isa) {
  switch (isa) {
    case SoftmaxIsa::Avx512:
      return "avx512";
    case SoftmaxIsa::Avx2:
      return "avx2";
    case SoftmaxIsa::Portable:
      break;
  }
  return "portable";
}

}  // namespace meshdit::cpu
