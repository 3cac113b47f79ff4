// What a header needs to compile for the host and, under nvcc, for the device alike (core/dtype.h, core/fp8.h,
// backend/quant_blocks.h): the function qualifier and the float <-> bits reinterpretation, which the device
// does by intrinsic and the host by memcpy.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MD_HOST_DEVICE __host__ __device__
#else
#define MD_HOST_DEVICE
#endif

namespace meshdit {

MD_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MD_HOST_DEVICE inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

}  // namespace meshdit
