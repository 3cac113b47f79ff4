// Reductions: layer / RMS norm and softmax one block per row; group norm and the row statistics in two
// stages (a fixed number of blocks per row writes partial sums, one thread per row adds them in order), so
// a group of millions of elements (a VAE's) spreads over the device and every run sums in the same order.
// Sums are float64, as the CPU backend accumulates them.
#include <algorithm>
#include <climits>

#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

// Sum (or max) over the block, returned to every thread. blockDim.x is a multiple of 32, at most 1024.
template <class T, class Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T part[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // part[] may still be read by a previous reduction
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = part[0];
  for (int w = 1; w < warps; ++w) v = op(v, part[w]);
  return v;
}
struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The modulation layer_norm_modulate applies to the normalised rows: row r = b * L + l takes shift / scale
// row b (rows of stride shift_b / scale_b, last dimension contiguous). shift null: no modulation.
struct RowModulation {
  const float* shift = nullptr;
  int64_t shift_b = 0;
  const float* scale = nullptr;
  int64_t scale_b = 0;
  int64_t L = 1;
};

__global__ void layer_norm_kernel(const float* x, int64_t ld, const float* w, const float* b, float eps, float* y,
                                  int64_t C, bool centre, RowModulation mod) {
  const float* xr = x + blockIdx.x * ld;
  float* yr = y + blockIdx.x * C;
  const int64_t mb = int64_t(blockIdx.x) / mod.L;
  const float* sh = mod.shift ? mod.shift + mb * mod.shift_b : nullptr;
  const float* sc = mod.shift ? mod.scale + mb * mod.scale_b : nullptr;
  double mean = 0;
  if (centre) {
    double s = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += double(xr[c]);
    mean = block_reduce(s, Add{}) / double(C);
  }
  double v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double d = double(xr[c]) - mean;
    v += d * d;
  }
  const double var = block_reduce(v, Add{}) / double(C);
  const float inv = float(1.0 / sqrt(var + double(eps)));
  const float mu = float(mean);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    if (centre) {
      float o = (xr[c] - mu) * inv;
      if (w) o *= w[c];
      if (b) o += b[c];
      // o is the float32 layer_norm would store: modulating it here changes no bit (--fmad=false).
      yr[c] = sh ? modulated(o, sh[c], sc[c]) : o;
    } else {
      yr[c] = w ? (xr[c] * inv) * w[c] : xr[c] * inv;
    }
  }
}

__global__ void softmax_kernel(float* x, int64_t C) {
  float* row = x + blockIdx.x * C;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) mx = fmaxf(mx, row[c]);
  mx = block_reduce(mx, Max{});
  if (mx == -INFINITY) {  // a fully masked row: zeros, not NaN
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) row[c] = 0.0f;
    return;
  }
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    row[c] = expf(row[c] - mx);
    s += row[c];
  }
  const float inv = float(1.0 / block_reduce(s, Add{}));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) row[c] *= inv;
}

// What the two-stage sums add up, element i of row r.
struct Plain {  // x
  const float* x;
  __device__ double operator()(int64_t r, int64_t n, int64_t i) const { return double(x[r * n + i]); }
};
struct SqDevF32 {  // (x - mean)^2 in float32, as the CPU's group statistics (mean rounded to float first)
  const float* x;
  const float* mean;
  __device__ double operator()(int64_t r, int64_t n, int64_t i) const {
    const float d = x[r * n + i] - mean[r];
    return double(d * d);
  }
};
struct SqDevF64 {  // (x - sum / n)^2 in float64: row_std
  const float* x;
  const double* sums;
  __device__ double operator()(int64_t r, int64_t n, int64_t i) const {
    const double d = double(x[r * n + i]) - sums[r] / double(n);
    return d * d;
  }
};
struct Square {  // x^2 in float64: row_l2
  const float* x;
  __device__ double operator()(int64_t r, int64_t n, int64_t i) const {
    const double v = x[r * n + i];
    return v * v;
  }
};
struct AbsDiff {  // |a - b| (which = 0) or |b| (which = 1): l1_change_sums
  const float* a;
  const float* b;
  int which;
  __device__ double operator()(int64_t, int64_t, int64_t i) const {
    return which ? fabs(double(b[i])) : fabs(double(a[i]) - double(b[i]));
  }
};

constexpr int64_t kChunkElems = 1 << 14;
constexpr int kMaxChunks = 512;

template <class F>
__global__ void partial_sums_kernel(F f, int64_t n, int chunks, double* partial) {
  const int64_t r = blockIdx.y, c = blockIdx.x;
  const int64_t i0 = n * c / chunks, i1 = n * (c + 1) / chunks;
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += f(r, n, i);
  s = block_reduce(s, Add{});
  if (threadIdx.x == 0) partial[r * chunks + c] = s;
}

__global__ void finish_sums_kernel(const double* partial, int chunks, int64_t R, double* out) {
  MD_GRID_LOOP(r, R) {
    double s = 0;
    for (int c = 0; c < chunks; ++c) s += partial[r * chunks + c];
    out[r] = s;
  }
}

// sums[r] = sum over i < n of f(r, n, i), for R rows; a float64 device tensor [R].
template <class F>
Tensor row_sums(const F& f, int64_t R, int64_t n) {
  Tensor out = Tensor::empty({R}, DType::F64, Device::CUDA);
  if (R == 0) return out;
  MD_CHECK(R <= 65535, "cuda: row reductions over more than 65535 rows are not implemented");
  const int chunks = int(std::clamp<int64_t>((n + kChunkElems - 1) / kChunkElems, 1, kMaxChunks));
  Tensor partial = Tensor::empty({R * chunks}, DType::F64, Device::CUDA);
  partial_sums_kernel<<<dim3(unsigned(chunks), unsigned(R)), kThreads, 0, stream()>>>(f, n, chunks,
                                                                                      partial.data<double>());
  MD_CUDA_LAUNCHED(partial_sums_kernel);
  MD_LAUNCH(finish_sums_kernel, R, partial.data<double>(), chunks, R, out.data<double>());
  return out;
}

// mean[r] = float(sums / n); rstd[r] = float(1 / sqrt(ssd / n + eps)).
__global__ void mean_kernel(const double* sums, double n, float* mean, int64_t R) {
  MD_GRID_LOOP(r, R) mean[r] = float(sums[r] / n);
}
__global__ void rstd_kernel(const double* ssd, double n, double eps, float* rstd, int64_t R) {
  MD_GRID_LOOP(r, R) rstd[r] = float(1.0 / sqrt(ssd[r] / n + eps));
}
__global__ void to_f32_kernel(const double* s, float* out, int64_t R) { MD_GRID_LOOP(r, R) out[r] = float(s[r]); }
__global__ void std_kernel(const double* ssd, double div, float* out, int64_t R) {
  MD_GRID_LOOP(r, R) out[r] = float(sqrt(ssd[r] / div));
}
__global__ void sqrt_kernel(const double* ss, float* out, int64_t R) { MD_GRID_LOOP(r, R) out[r] = float(sqrt(ss[r])); }
__global__ void moments_kernel(const float* s, double count, double eps, bool rstd, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = rstd ? float(1.0 / sqrt(double(s[i]) / count + eps)) : float(double(s[i]) / count);
}

// y = (x - mean) * (rstd * w[c]) + b[c], then act, over groups of n = (C / groups) * S contiguous elements.
__global__ void normalize_groups_kernel(const float* x, const float* mean, const float* rstd, const float* w,
                                        const float* b, Act act, float* y, int64_t groups, int64_t cg, int64_t S,
                                        int64_t total) {
  const int64_t n = cg * S;
  MD_GRID_LOOP(i, total) {
    const int64_t bg = i / n, c = (bg % groups) * cg + (i % n) / S;
    const float scale = w ? rstd[bg] * w[c] : rstd[bg];
    const float shift = b ? b[c] : 0.0f;
    y[i] = act_value((x[i] - mean[bg]) * scale + shift, act);
  }
}

void normalize_groups(const Tensor& x, int64_t groups, const float* mean, const float* rstd, const Tensor* w,
                      const Tensor* b, Act act, Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, B * C), total = x.numel();
  const Tensor wf = w ? f32_contiguous(*w) : Tensor(), bf = b ? f32_contiguous(*b) : Tensor();
  MD_LAUNCH(normalize_groups_kernel, total, x.f32(), mean, rstd, w ? wf.f32() : nullptr, b ? bf.f32() : nullptr, act,
            y.f32(), groups, C / groups, S, total);
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  if (R == 0) return;
  const Tensor wf = w ? f32_contiguous(*w) : Tensor(), bf = b ? f32_contiguous(*b) : Tensor();
  layer_norm_kernel<<<unsigned(R), kThreads, 0, stream()>>>(
      x.f32(), x.stride(0), w ? wf.f32() : nullptr, b ? bf.f32() : nullptr, eps, y.f32(), C, true, RowModulation{});
  MD_CUDA_LAUNCHED(layer_norm_kernel);
}

void layer_norm_modulate(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& shift,
                         const Tensor& scale, Tensor& y) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), R = B * L;
  for (const Tensor* t : {&shift, &scale})
    MD_CHECK(t->dtype() == DType::F32 && t->dim() == 2 && t->size(0) == B && t->size(1) == C && t->stride(1) == 1,
             "cuda layer_norm_modulate: shift / scale must be float32 [B, C] rows with a contiguous last dimension, "
             "got " +
                 std::string(dtype_name(t->dtype())) + " " + shape_str(t->shape()));
  MD_CHECK(x.is_contiguous(), "cuda layer_norm_modulate: x must be contiguous");
  MD_CHECK(R <= int64_t(INT32_MAX), "cuda layer_norm_modulate: " + std::to_string(R) + " rows exceed one grid");
  if (R == 0) return;
  const Tensor wf = w ? f32_contiguous(*w) : Tensor(), bf = b ? f32_contiguous(*b) : Tensor();
  const RowModulation mod{shift.f32(), shift.stride(0), scale.f32(), scale.stride(0), L};
  layer_norm_kernel<<<unsigned(R), kThreads, 0, stream()>>>(x.f32(), C, w ? wf.f32() : nullptr, b ? bf.f32() : nullptr,
                                                            eps, y.f32(), C, true, mod);
  MD_CUDA_LAUNCHED(layer_norm_kernel);
}

void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  if (R == 0) return;
  const Tensor wf = w ? f32_contiguous(*w) : Tensor();
  layer_norm_kernel<<<unsigned(R), kThreads, 0, stream()>>>(x.f32(), x.stride(0), w ? wf.f32() : nullptr, nullptr, eps,
                                                            y.f32(), C, false, RowModulation{});
  MD_CUDA_LAUNCHED(layer_norm_kernel);
}

void softmax(Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1);
  if (R == 0 || C == 0) return;
  softmax_kernel<<<unsigned(R), kThreads, 0, stream()>>>(x.f32(), C);
  MD_CUDA_LAUNCHED(softmax_kernel);
}

void group_norm(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, B * C);
  const int64_t R = B * groups, n = (C / groups) * S;
  if (x.numel() == 0) return;
  Tensor mean = Tensor::empty({R}, DType::F32, Device::CUDA), rstd = Tensor::empty({R}, DType::F32, Device::CUDA);
  const Tensor sums = row_sums(Plain{x.f32()}, R, n);
  MD_LAUNCH(mean_kernel, R, sums.data<double>(), double(n), mean.f32(), R);
  const Tensor ssd = row_sums(SqDevF32{x.f32(), mean.f32()}, R, n);
  MD_LAUNCH(rstd_kernel, R, ssd.data<double>(), double(n), double(eps), rstd.f32(), R);
  normalize_groups(x, groups, mean.f32(), rstd.f32(), w, b, act, y);
}

void group_sums(const Tensor& x, int64_t groups, const Tensor* mean, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, B * C);
  const int64_t R = B * groups, n = (C / groups) * S;
  const Tensor s = mean ? row_sums(SqDevF32{x.f32(), mean->f32()}, R, n) : row_sums(Plain{x.f32()}, R, n);
  MD_LAUNCH(to_f32_kernel, R, s.data<double>(), out.f32(), R);
}

void group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* w,
                      const Tensor* b, Act act, Tensor& y) {
  if (x.numel() == 0) return;
  normalize_groups(x, groups, mean.f32(), rstd.f32(), w, b, act, y);
}

void moments_from_sums(const Tensor& sums, double count, double eps, bool rstd, Tensor& y) {
  MD_LAUNCH(moments_kernel, sums.numel(), sums.f32(), count, eps, rstd, y.f32(), sums.numel());
}

void row_std(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), n = x.numel() / R;
  const Tensor sums = row_sums(Plain{x.f32()}, R, n);
  const Tensor ssd = row_sums(SqDevF64{x.f32(), sums.data<double>()}, R, n);
  MD_LAUNCH(std_kernel, R, ssd.data<double>(), double(n > 1 ? n - 1 : 1), out.f32(), R);
}

void row_l2(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), n = x.numel() / R;
  const Tensor ss = row_sums(Square{x.f32()}, R, n);
  MD_LAUNCH(sqrt_kernel, R, ss.data<double>(), out.f32(), R);
}

void l1_change_sums(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = a.numel();
  const Tensor d = row_sums(AbsDiff{a.f32(), b.f32(), 0}, 1, n), s = row_sums(AbsDiff{a.f32(), b.f32(), 1}, 1, n);
  Tensor head = out.slice(0, 0, 1), tail = out.slice(0, 1, 2);
  MD_LAUNCH(to_f32_kernel, 1, d.data<double>(), head.f32(), 1);
  MD_LAUNCH(to_f32_kernel, 1, s.data<double>(), tail.f32(), 1);
}

}  // namespace meshdit::cuda
