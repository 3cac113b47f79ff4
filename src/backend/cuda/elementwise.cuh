// Device helpers shared by the element-wise kernels and the fused tails of other kernels.
#pragma once
#include "backend/cuda/common.cuh"

namespace meshdit::cuda {

// The activations in the CPU backend's forms (backend/cpu/vec_math.h: x / (1 + exp(-k x)) for the
// sigmoid-based ones), with the device's accurate expf / erff / tanhf.
__device__ inline float act_value(float x, Act act) {
  switch (act) {
    case Act::None:
      return x;
    case Act::GeluTanh: {
      const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return x / (1.0f + expf(-2.0f * u));
    }
    case Act::GeluErf:
      return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case Act::SiLU:
      return x / (1.0f + expf(-x));
    case Act::QuickGelu:
      return x / (1.0f + expf(-1.702f * x));
    case Act::Relu:
      return x > 0.0f ? x : 0.0f;
    case Act::Tanh:
      return tanhf(x);
  }
  return x;
}

// modulate's expression, in one place for modulate and layer_norm_modulate (norms.cu), whose bit-identity
// rests on it; with --fmad=false it is a rounded product and a rounded sum, as on the CPU.
__device__ inline float modulated(float x, float shift, float scale) { return x * (1.0f + scale) + shift; }

// for (i = this thread's first; i < n; i += grid size)

}  // namespace meshdit::cuda
