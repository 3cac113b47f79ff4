// Convolution on the CPU as im2col + GEMM. For one image the output is the matrix
//   Y [O, Ho*Wo] = W [O, K] . col [K, Ho*Wo],   K = C*kh*kw,
// where column p of col holds the K input values output pixel p sees through the kernel. col is never
// built whole: a task expands one tile of output pixels (at most kColFloats floats, so memory stays bounded
// for any image size) into a per-thread buffer and multiplies it by the weight (or a block of its rows)
// with one single-threaded gemm() (backend/cpu/gemm.h); our pool runs the tasks, as in linear(). A 1x1, stride-1, unpadded conv
// needs no expansion: the input image already is col.
#include "backend/cpu/conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "backend/cpu/gemm.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {

constexpr int64_t kColFloats = int64_t(1) << 20;  // 4 MiB of im2col per thread at most (unless K alone is more)
constexpr int64_t kMinTile = 32;                  // output pixels per tile, at least

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Smallest q with q * b >= a, for any sign of a (b > 0).
int64_t ceil_div_any(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// The weight as float32 [O, K]: the tensor itself when stored so, else widened once per call (every tile
// of output pixels uses all of it).
const float* weight_f32(const Tensor& w, std::vector<float>& buf) {
  if (w.dtype() == DType::F32) return w.data<float>();
  MD_CHECK(w.dtype() == DType::BF16 || w.dtype() == DType::F16,
           std::string("conv2d: unsupported weight dtype ") + dtype_name(w.dtype()));
  const int64_t n = w.numel();
  buf.resize(size_t(n));
  const uint16_t* s = w.data<uint16_t>();
  float* d = buf.data();
  const bool bf16 = w.dtype() == DType::BF16;
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        if (bf16) {
          for (int64_t i = i0; i < i1; ++i) d[i] = bf16_to_f32(s[i]);
        } else {
          for (int64_t i = i0; i < i1; ++i) d[i] = f16_to_f32(s[i]);
        }
      },
      int64_t(1) << 16);
  return d;
}

// col [K, p1 - p0] for output pixels [p0, p1) (row-major over (oh, ow)) of one image x [C, H, W]: row
// (c, ki, kj) holds the value each pixel sees through kernel tap (ki, kj), zero where the tap falls in
// the padding.
void im2col(const float* x, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, const Conv2dParams& p, int64_t Wo,
            int64_t p0, int64_t p1, float* col) {
  const int64_t n = p1 - p0, sh = p.stride_h, sw = p.stride_w;
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * H * W;
    for (int64_t ki = 0; ki < kh; ++ki) {
      for (int64_t kj = 0; kj < kw; ++kj) {
        float* dst = col + ((c * kh + ki) * kw + kj) * n;
        // Output columns whose tap lands inside the input row: 0 <= ow * sw - pad_left + kj < W.
        const int64_t lo = std::max<int64_t>(0, ceil_div_any(p.pad_left - kj, sw));
        const int64_t hi = std::min<int64_t>(Wo, ceil_div_any(W + p.pad_left - kj, sw));
        for (int64_t q = p0; q < p1;) {
          const int64_t oh = q / Wo, ow0 = q % Wo, ow1 = std::min(Wo, ow0 + (p1 - q));
          float* d = dst + (q - p0);  // d[i] is output column ow0 + i of row oh
          const int64_t ih = oh * sh - p.pad_top + ki;
          if (ih < 0 || ih >= H) {
            std::fill(d, d + (ow1 - ow0), 0.0f);
          } else {
            const int64_t a = std::clamp(lo, ow0, ow1), b = std::max(a, std::clamp(hi, ow0, ow1));
            std::fill(d, d + (a - ow0), 0.0f);
            const float* src = xc + ih * W;
            const int64_t off = kj - p.pad_left;  // input column of output column ow: ow * sw + off
            if (sw == 1) {
              if (b > a) std::memcpy(d + (a - ow0), src + a + off, size_t(b - a) * sizeof(float));
            } else {
              for (int64_t ow = a; ow < b; ++ow) d[ow - ow0] = src[ow * sw + off];
            }
            std::fill(d + (b - ow0), d + (ow1 - ow0), 0.0f);
          }
          q += ow1 - ow0;
        }
      }
    }
  }
}

// Sum of f(x[i]) over n floats: 16 float lanes the compiler vectorises, flushed into a double every 4096
// elements so that a million-element group sums as accurately as a short one.
template <class F>
double lane_sum(const float* x, int64_t n, F f) {
  constexpr int kLanes = 16;
  constexpr int64_t kFlush = 4096;
  double total = 0;
  for (int64_t i = 0; i < n;) {
    const int64_t end = std::min(n, i + kFlush);
    float lanes[kLanes] = {};
    for (; i + kLanes <= end; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += f(x[i + l]);
    for (; i < end; ++i) lanes[0] += f(x[i]);
    double s = 0;
    for (int l = 0; l < kLanes; ++l) s += lanes[l];
    total += s;
  }
  return total;
}

}  // namespace

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t Ho = y.size(2), Wo = y.size(3), P = Ho * Wo, K = C * kh * kw;
  std::vector<float> wbuf;
  const float* wp = weight_f32(w, wbuf);
  std::vector<float> bias_f;
  if (bias) bias_f = bias->to_vector();
  const bool direct = kh == 1 && kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 && p.pad_left == 0 &&
                      p.pad_bottom == 0 && p.pad_right == 0;
  const float* xp = x.f32();
  float* yp = y.f32();

  // Work grid: (image, tile of output pixels, block of output channels). The pool splits tasks statically,
  // so big convs get several tiles per thread; when pixels alone cannot feed every thread (small latents,
  // many channels) the weight rows are split too. A thread keeps its expanded tile across consecutive
  // channel blocks of the same tile.
  const int T = num_threads();
  int64_t tile = std::min(P, std::max(kMinTile, kColFloats / std::max<int64_t>(K, 1)));
  int64_t o_blocks = 1;
  const bool big = double(B) * double(O) * double(K) * double(P) >= 64.0 * 64 * 64;
  if (big) {
    tile = std::min(tile, std::max(kMinTile, ceil_div(P, ceil_div(4 * T, B))));
    const int64_t pixel_tasks = B * ceil_div(P, tile);
    if (pixel_tasks < T) o_blocks = std::max<int64_t>(1, std::min(ceil_div(T, pixel_tasks), O / 16));
  }
  const int64_t n_tiles = ceil_div(P, tile), n_tasks = B * n_tiles * o_blocks;
  // A tiny conv (min_chunk = all of it) runs on the calling thread: threading would cost more than it saves.
  parallel_for(
      n_tasks,
      [&](int64_t t0, int64_t t1, int) {
        thread_local std::vector<float> col;
        int64_t expanded = -1;  // (image, tile) whose expansion col holds
        for (int64_t task = t0; task < t1; ++task) {
          const int64_t ob = task % o_blocks, bt = task / o_blocks, ti = bt % n_tiles, b = bt / n_tiles;
          const int64_t p0 = ti * tile, p1 = std::min(P, p0 + tile), np = p1 - p0;
          const int64_t o0 = O * ob / o_blocks, o1 = O * (ob + 1) / o_blocks;
          const float* xb = xp + b * C * H * W;
          const float* cp;
          int64_t ldb;  // leading dimension of the [K, np] right-hand matrix
          if (direct) {
            cp = xb + p0;
            ldb = P;
          } else {
            if (expanded != bt) {
              if (int64_t(col.size()) < K * np) col.resize(size_t(K * np));
              im2col(xb, C, H, W, kh, kw, p, Wo, p0, p1, col.data());
              expanded = bt;
            }
            cp = col.data();
            ldb = np;
          }
          float* yb = yp + (b * O + o0) * P + p0;
          gemm(o1 - o0, np, K, 1.0f, {wp + o0 * K, DType::F32, K, false}, {cp, DType::F32, ldb, false}, 0.0f, yb, P);
          if (bias) {
            for (int64_t o = o0; o < o1; ++o) {
              float* row = yb + (o - o0) * P;
              const float bo = bias_f[size_t(o)];
              for (int64_t i = 0; i < np; ++i) row[i] += bo;
            }
          }
        }
      },
      big ? 1 : n_tasks);
}

namespace {

// y = (x - mean) * rstd * w + b over every group, then the activation: the one normalisation shared by
// group_norm (statistics of its own) and group_norm_apply (statistics given, e.g. summed over ranks).
// stats(bg) -> {mean, rstd} of group bg (batch * groups + group).
template <class Stats>
void normalize_groups(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, Act act, Tensor& y,
                      Stats stats) {
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, B * C);
  const int64_t cg = C / groups, n = cg * S;  // channels and elements of one group
  std::vector<float> wf, bf;
  if (w) wf = w->to_vector();
  if (b) bf = b->to_vector();
  const float* xp = x.f32();
  float* yp = y.f32();
  // Group g of image i is the contiguous run [(i * groups + g) * n, +n) of the NC... layout.
  parallel_for(B * groups, [&](int64_t g0, int64_t g1, int) {
    for (int64_t bg = g0; bg < g1; ++bg) {
      const int64_t c0 = (bg % groups) * cg;
      const float* xg = xp + bg * n;
      float* yg = yp + bg * n;
      const auto [mu, rstd] = stats(bg, xg, n);
      for (int64_t c = 0; c < cg; ++c) {
        const float scale = w ? rstd * wf[size_t(c0 + c)] : rstd;
        const float shift = b ? bf[size_t(c0 + c)] : 0.0f;
        const float* xc = xg + c * S;
        float* yc = yg + c * S;
        for (int64_t s = 0; s < S; ++s) yc[s] = (xc[s] - mu) * scale + shift;
      }
      if (act != Act::None) {
        // The backend's own activation kernel on this group (its parallel_for runs inline here).
        Tensor part = Tensor::wrap(yg, {n}, DType::F32, nullptr, false);
        cpu_backend().activation(part, act);
      }
    }
  });
}

}  // namespace

void group_norm(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y) {
  normalize_groups(x, groups, w, b, act, y, [eps](int64_t, const float* xg, int64_t n) {
    const float mu = float(lane_sum(xg, n, [](float v) { return v; }) / double(n));
    const double var = lane_sum(xg, n, [mu](float v) { return (v - mu) * (v - mu); }) / double(n);
    return std::pair<float, float>{mu, float(1.0 / std::sqrt(var + double(eps)))};
  });
}

void group_sums(const Tensor& x, int64_t groups, const Tensor* mean, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, B * C);
  const int64_t n = (C / groups) * S;
  const float* xp = x.f32();
  const float* mp = mean ? mean->f32() : nullptr;
  float* op = out.f32();
  // The same float32 lanes as group_norm's own statistics, so a split image sums like a whole one.
  parallel_for(B * groups, [&](int64_t g0, int64_t g1, int) {
    for (int64_t bg = g0; bg < g1; ++bg) {
      const float* xg = xp + bg * n;
      if (mp) {
        const float mu = mp[bg];
        op[bg] = float(lane_sum(xg, n, [mu](float v) { return (v - mu) * (v - mu); }));
      } else {
        op[bg] = float(lane_sum(xg, n, [](float v) { return v; }));
      }
    }
  });
}

void group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* w,
                      const Tensor* b, Act act, Tensor& y) {
  const float* mp = mean.f32();
  const float* rp = rstd.f32();
  normalize_groups(x, groups, w, b, act, y, [mp, rp](int64_t bg, const float*, int64_t) {
    return std::pair<float, float>{mp[bg], rp[bg]};
  });
}

void upsample_nearest2x(const Tensor& x, Tensor& y) {
  const int64_t rows = x.size(0) * x.size(1) * x.size(2), W = x.size(3);
  const float* xp = x.f32();
  float* yp = y.f32();
  // Input row r (image, channel, i) becomes output rows 2i and 2i + 1 of that channel: 4W floats at 4W r.
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* s = xp + r * W;
          float* d = yp + r * 4 * W;
          for (int64_t j = 0; j < W; ++j) d[2 * j] = d[2 * j + 1] = s[j];
          std::memcpy(d + 2 * W, d, size_t(2 * W) * sizeof(float));
        }
      },
      64);
}

}  // namespace meshdit::cpu
