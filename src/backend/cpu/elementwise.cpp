#include "backend/cpu/elementwise.h"

#include <algorithm>

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

void div_add(const Tensor& x, float d, float b, Tensor& y) {
  const float* s = x.f32();
  float* o = y.f32();
  parallel_for(x.numel(), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) o[i] = s[i] / d + b;
  }, kGrain);
}

// a and b are read through their strides (0 along the broadcast dimensions), a run of the last
// dimension at a time.
void add_broadcast(const Tensor& a, const Tensor& b, Tensor& y) {
  const int64_t n = y.numel();
  if (n == 0) return;
  float* d = y.f32();
  const float* pa = a.f32();
  const float* pb = b.f32();
  const int64_t rank = y.dim();
  if (rank == 0) {
    d[0] = pa[0] + pb[0];
    return;
  }
  const int64_t inner = y.size(-1), outer = n / inner, sa = a.stride(-1), sb = b.stride(-1);
  parallel_for(outer, [&](int64_t o0, int64_t o1, int) {
    for (int64_t o = o0; o < o1; ++o) {
      int64_t oa = 0, ob = 0;
      for (int64_t k = rank - 2, rest = o; k >= 0; --k) {
        const int64_t idx = rest % y.size(k);
        rest /= y.size(k);
        oa += idx * a.stride(k);
        ob += idx * b.stride(k);
      }
      const float* ra = pa + oa;
      const float* rb = pb + ob;
      float* rd = d + o * inner;
      for (int64_t i = 0; i < inner; ++i) rd[i] = ra[i * sa] + rb[i * sb];
    }
  }, std::max<int64_t>(1, kGrain / inner));
}

}  // namespace meshdit::cpu
