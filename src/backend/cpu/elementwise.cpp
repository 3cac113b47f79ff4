#include "backend/cpu/elementwise.h"

#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per task: small tensors stay on one thread
}

void fill(Tensor& y, float value) {
  float* p = y.f32();
  parallel_for(y.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) p[i] = value;
  }, kGrain);
}

void affine(const Tensor& x, float a, float b, Tensor& y) {
  const float* s = x.f32();
  float* d = y.f32();
  parallel_for(x.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) d[i] = s[i] * a + b;
  }, kGrain);
}

void lerp(const Tensor& a, const Tensor& b, float w, Tensor& y) {
  const float* pa = a.f32();
  const float* pb = b.f32();
  float* d = y.f32();
  parallel_for(a.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) d[i] = pa[i] + w * (pb[i] - pa[i]);
  }, kGrain);
}

void clamp(Tensor& x, float lo, float hi) {
  float* p = x.f32();
  parallel_for(x.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) p[i] = p[i] < lo ? lo : (p[i] > hi ? hi : p[i]);
  }, kGrain);
}

void mul(const Tensor& a, const Tensor& b, Tensor& y) {
  const float* pa = a.f32();
  const float* pb = b.f32();
  float* d = y.f32();
  parallel_for(a.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) d[i] = pa[i] * pb[i];
  }, kGrain);
}

}  // namespace meshdit::cpu
