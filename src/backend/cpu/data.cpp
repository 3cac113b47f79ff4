#include "backend/cpu/data.h"

#include <cmath>
#include <cstring>

#include "core/memory_info.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {

void copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void zero(Tensor& y) {
  if (y.nbytes()) std::memset(y.raw(), 0, y.nbytes());
}

size_t free_memory() {
  const double b = available_memory_bytes();
  return b > 0 ? size_t(b) : 0;
}

bool embedding(const Tensor& table, const Tensor& ids, Tensor& out, int64_t* bad_id) {
  const int64_t V = table.size(0), D = table.size(1), N = ids.numel();
  const int64_t* id = ids.data<int64_t>();
  // Every id is checked before any row is written, so an error leaves no half-done work behind.
  for (int64_t i = 0; i < N; ++i) {
    if (id[i] < 0 || id[i] >= V) {
      *bad_id = id[i];
      return false;
    }
  }
  float* o = out.f32();
  const size_t es = dtype_size(table.dtype());
  const bool dense_rows = table.stride(1) == 1 || D == 1;
  parallel_for(
      N,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          float* dst = o + i * D;
          const char* src = static_cast<const char*>(table.raw()) + size_t(id[i] * table.stride(0)) * es;
          if (dense_rows && table.dtype() == DType::F32) {
            std::memcpy(dst, src, size_t(D) * 4);
          } else if (dense_rows && table.dtype() == DType::BF16) {
            const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
            for (int64_t c = 0; c < D; ++c) dst[c] = bf16_to_f32(s[c]);
          } else if (dense_rows && table.dtype() == DType::F16) {
            const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
            for (int64_t c = 0; c < D; ++c) dst[c] = f16_to_f32(s[c]);
          } else {
            Tensor row = out.select(0, i);
            host_copy(table.select(0, id[i]), row);
          }
        }
      },
      16);
  return true;
}

// diffusers: exponent = -log(max_period) * arange(half, float32) / (half - shift); emb = t[:, None] *
// exp(exponent); emb = scale * emb; every step in float32 (the python float -log(max_period) cast to
// float32 first), then [sin, cos], or [cos, sin] when flipped. The order is kept step by step: the
// reference tests compare against it to the last bit.
void timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                        float max_period, Tensor& out) {
  const int half = dim / 2;
  const float* tv = t.f32();
  float* o = out.f32();
  const float neg_log = float(-std::log(double(max_period)));
  for (int64_t b = 0; b < t.size(0); ++b) {
    float* row = o + b * dim;
    for (int i = 0; i < half; ++i) {
      float exponent = neg_log * float(i);
      exponent = exponent / (float(half) - downscale_freq_shift);
      float arg = tv[b] * std::exp(exponent);
      arg = scale * arg;
      const float s = std::sin(arg), c = std::cos(arg);
      row[i] = flip_sin_to_cos ? c : s;
      row[half + i] = flip_sin_to_cos ? s : c;
    }
    if (dim % 2) row[dim - 1] = 0.0f;
  }
}

}  // namespace meshdit::cpu
