// The kernels whose float32 results must equal torch's bit for bit (the scheduler fixtures compare at
// 1e-6): this file is compiled with -ffp-contract=off (CMakeLists.txt), so a * x + b * y stays two rounded
// products and a rounded sum instead of becoming a fused multiply-add.
#include "backend/cpu/model_kernels.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per task: small tensors stay on one thread
}

void axpby(float a, const Tensor& x, float b, const Tensor* y, Tensor& out) {
  const float* px = x.f32();
  const float* py = y ? y->f32() : nullptr;
  float* d = out.f32();
  parallel_for(x.numel(), [&](int64_t i0, int64_t i1, int) {
    if (py) {
      for (int64_t i = i0; i < i1; ++i) {
        const float p = a * px[i];
        const float q = b * py[i];
        d[i] = p + q;
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = a * px[i];
    }
  }, kGrain);
}

}  // namespace meshdit::cpu
