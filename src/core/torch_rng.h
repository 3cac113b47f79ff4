// PyTorch's CPU random generator, reimplemented so that the initial noise of a pipeline is bit for bit what
// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` gives in float32 on x86.
//
// What ATen does (and this file reproduces):
//  * Engine: ATen's own mt19937 (MT19937 with the 2002 init_genrand seeding of the low 32 bits of the seed).
//    random() is one 32-bit draw, random64() is (first << 32) | second.
//  * uniform_real_distribution<float>(0, 1): (random() & (2^24 - 1)) * 2^-24; <double>: (random64() & (2^53 - 1))
//    * 2^-53.
//  * normal_ on a contiguous float32 tensor of >= 16 elements (the path torch.randn takes): first one float
//    uniform per element, in order; then Box-Muller on each block of 16 (pairs j, j + 8: u1 = 1 - data[j] feeds the
//    radius, u2 = data[j + 8] the angle; data[j] = r cos, data[j + 8] = r sin). When the size is not a multiple of
//    16, the last 16 elements are drawn again (16 more uniforms) and transformed as one block, overwriting the
//    tail. x86 builds run this Box-Muller through the AVX2 kernel (on AVX-512 machines too: normal_stub has no
//    AVX-512 registration), whose log and sincos are Cephes polynomials (avx_mathfun.h), not libm, compiled with
//    FMA contraction: the exact fused/unfused pattern is reproduced here with std::fma (this file is compiled
//    with -ffp-contract=off so that nothing else fuses).
//  * normal_ on fewer than 16 elements (or non-float32): at::normal_distribution<double> per element: two double
//    uniforms u1, u2; r = sqrt(-2 log1p(-u2)), theta = 2 pi u1; returns r cos(theta) and caches r sin(theta) in
//    the generator for the next call (the cache survives across calls and is cleared by manual_seed).
#pragma once
#include <array>
#include <cstdint>
#include <optional>

#include "core/tensor.h"

namespace meshdit {

// at::mt19937.
class TorchMt19937 {
 public:
  explicit TorchMt19937(uint64_t seed = 5489);
  uint32_t operator()();
  uint64_t seed() const { return seed_; }

 private:
  void next_state();
  std::array<uint32_t, 624> state_{};
  uint64_t seed_ = 0;
  int left_ = 1;
  uint32_t next_ = 0;
};

// at::CPUGeneratorImpl: the engine plus the cached second Box-Muller sample of the scalar normal path.
class TorchGenerator {
 public:
  static constexpr uint64_t kDefaultSeed = 67280421310721ULL;  // c10::detail::default_rng_seed_val

  explicit TorchGenerator(uint64_t seed = kDefaultSeed) { manual_seed(seed); }
  // torch.Generator.manual_seed: a fresh engine, cached normal samples dropped.
  void manual_seed(uint64_t seed);
  uint64_t initial_seed() const { return engine_.seed(); }

  uint32_t random() { return engine_(); }
  uint64_t random64();
  float uniform_float();    // at::uniform_real_distribution<float>(0, 1)
  double uniform_double();  // at::uniform_real_distribution<double>(0, 1)
  // at::normal_distribution<double>(mean, std): Box-Muller with the cached second sample.
  double normal_double(double mean = 0.0, double std = 1.0);
  bool has_cached_normal() const { return next_double_normal_.has_value(); }

  // Tensor.normal_(mean, std) on n contiguous float32 values, as ATen's CPU kernel (x86/AVX2 build) computes it.
  void normal_(float* data, int64_t n, double mean = 0.0, double std = 1.0);
  // torch.randn(shape, generator=this) in float32 (contiguous).
  Tensor randn(const Shape& shape);

 private:
  TorchMt19937 engine_;
  std::optional<double> next_double_normal_;
};

// torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)), float32.
Tensor torch_randn(const Shape& shape, uint64_t seed);

// The pieces of the AVX2 kernel, one lane at a time (exposed for tests).
namespace torch_rng_detail {
float log_ps(float x);                                  // log256_ps
void sincos_ps(float x, float* s, float* c);            // sincos256_ps
void box_muller16(float* data, float mean, float std);  // normal_fill_16_AVX2 on 16 uniforms in place
}  // namespace torch_rng_detail

}  // namespace meshdit
