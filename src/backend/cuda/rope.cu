// Rotary embeddings (rotation in place and the cos / sin tables) and the timestep embedding. The tables are
// evaluated in float64 as the contract says; the frequencies come from the host's std::pow, the same values
// the CPU backend uses.
#include <cmath>

#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

// x [B, L, H, D]: pair (2i, 2i + 1) rotated by column 2i / 2i + 1 of cos, sin [L, D]. n = B * L * H * D / 2.
__global__ void rope_kernel(float* x, const float* c, const float* s, int64_t L, int64_t H, int64_t D, int64_t n) {
  MD_GRID_LOOP(i, n) {
    const int64_t d = (i % (D / 2)) * 2, row = i / (D / 2), l = (row / H) % L;
    float* v = x + row * D + d;
    const float* cl = c + l * D + d;
    const float* sl = s + l * D + d;
    const float x0 = v[0], x1 = v[1];
    v[0] = x0 * cl[0] - x1 * sl[0];
    v[1] = x1 * cl[1] + x0 * sl[1];
  }
}

// x [B, L, H, D]: dimension i pairs with i + D/2, frequency i at column 2i of the tables.
__global__ void rope_half_kernel(float* x, const float* c, const float* s, int64_t L, int64_t H, int64_t D, int64_t n) {
  const int64_t half = D / 2;
  MD_GRID_LOOP(k, n) {
    const int64_t i = k % half, row = k / half, l = (row / H) % L;
    float* v = x + row * D;
    const float x0 = v[i], x1 = v[i + half], ci = c[l * D + 2 * i], si = s[l * D + 2 * i];
    v[i] = x0 * ci - x1 * si;
    v[i + half] = x1 * ci + x0 * si;
  }
}

// One thread per (position, column pair): the pair's axis and frequency come from the tables.
__global__ void rope_tables_kernel(const float* pos, int64_t n_axes, const double* freq, const int* pair_axis,
                                   int64_t pairs, float* c, float* s, int64_t n) {
  MD_GRID_LOOP(k, n) {
    const int64_t f = k % pairs, l = k / pairs;
    const double angle = double(pos[l * n_axes + pair_axis[f]]) * freq[f];
    const int64_t D = 2 * pairs, col = 2 * f;
    c[l * D + col] = c[l * D + col + 1] = float(cos(angle));
    s[l * D + col] = s[l * D + col + 1] = float(sin(angle));
  }
}

// diffusers' float32 order of operations (backend/cpu/data.cpp), each step rounded to float32; exp, sin and
// cos evaluated in float64 and rounded, which is what a correctly rounded libm gives.
__global__ void timestep_kernel(const float* t, int half, int dim, bool flip, float shift, float scale, float neg_log,
                                float* out, int64_t n) {
  MD_GRID_LOOP(k, n) {
    const int i = int(k % half);
    const int64_t b = k / half;
    float exponent = __fmul_rn(neg_log, float(i));
    exponent = __fdiv_rn(exponent, __fsub_rn(float(half), shift));
    float arg = __fmul_rn(t[b], float(exp(double(exponent))));
    arg = __fmul_rn(scale, arg);
    const float sv = float(sin(double(arg))), cv = float(cos(double(arg)));
    float* row = out + b * dim;
    row[i] = flip ? cv : sv;
    row[half + i] = flip ? sv : cv;
    if (i == 0 && dim % 2) row[dim - 1] = 0.0f;
  }
}

__global__ void zero_last_kernel(float* out, int dim, int64_t rows) {
  MD_GRID_LOOP(b, rows) out[b * dim + dim - 1] = 0.0f;
}

}  // namespace

void rope(Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t L = x.size(1), H = x.size(2), D = x.size(3), n = x.numel() / 2;
  MD_LAUNCH(rope_kernel, n, x.f32(), cos.f32(), sin.f32(), L, H, D, n);
}

void rope_half(Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t L = x.size(1), H = x.size(2), D = x.size(3), n = x.numel() / 2;
  MD_LAUNCH(rope_half_kernel, n, x.f32(), cos.f32(), sin.f32(), L, H, D, n);
}

void rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta, Tensor& cos, Tensor& sin) {
  const int64_t L = pos.size(0), n_axes = pos.size(1);
  std::vector<double> freq;
  std::vector<int> axis;
  for (int64_t a = 0; a < n_axes; ++a) {
    const int dim = axes_dims[size_t(a)];
    for (int i = 0; i < dim / 2; ++i) {
      freq.push_back(1.0 / std::pow(theta, double(2 * i) / double(dim)));
      axis.push_back(int(a));
    }
  }
  const int64_t pairs = int64_t(freq.size()), n = L * pairs;
  if (n == 0) return;
  const Tensor f = upload(freq.data(), freq.size() * sizeof(double)),
               ax = upload(axis.data(), axis.size() * sizeof(int));
  MD_LAUNCH(rope_tables_kernel, n, pos.f32(), n_axes, f.data<double>(), ax.data<int>(), pairs, cos.f32(), sin.f32(), n);
}

void timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                        float max_period, Tensor& out) {
  const int half = dim / 2;
  const int64_t rows = t.size(0), n = rows * half;
  const float neg_log = float(-std::log(double(max_period)));
  MD_LAUNCH(timestep_kernel, n, t.f32(), half, dim, flip_sin_to_cos, downscale_freq_shift, scale, neg_log, out.f32(),
            n);
  if (half == 0 && dim == 1) MD_LAUNCH(zero_last_kernel, rows, out.f32(), dim, rows);
}

}  // namespace meshdit::cuda
