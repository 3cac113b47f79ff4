// Convolution as im2col + one cuBLASLt product per tile of output pixels (float32 products, as the contract
// keeps the conv GEMM in float32 in every precision). For image b and output pixels [p0, p0 + np):
//   Y_b [O, np] (row-major, leading dimension P = Ho * Wo) = W [O, K] . col [K, np],   K = C * kh * kw,
// which column-major is Y^T [np, O] = col^T [np, K] . W^T [K, O], both operands as stored. Tiles keep col
// under kColFloats; a 1x1, stride-1, unpadded conv reads the image itself as col. The bias is added after the
// product (cuBLASLt's bias epilogue runs along the other dimension of this layout). cuDNN (and its 3-D
// convolutions for the video VAEs) is the next step; asymmetric padding, which cuDNN's legacy API cannot
// express, is native here.
#include <algorithm>

#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

constexpr int64_t kColFloats = int64_t(1) << 26;  // 256 MiB of im2col at most (unless one pixel's K is more)

// col [K, np]: row (c, ki, kj), column i = the value output pixel p0 + i sees through tap (ki, kj), 0 in the
// padding.
__global__ void im2col_kernel(const float* x, int64_t H, int64_t W, int64_t kh, int64_t kw, int sh, int sw, int pt,
                              int pl, int64_t Wo, int64_t p0, int64_t np, float* col, int64_t n) {
  MD_GRID_LOOP(e, n) {
    const int64_t i = e % np, row = e / np;
    const int64_t kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const int64_t p = p0 + i, oh = p / Wo, ow = p % Wo;
    const int64_t ih = oh * sh - pt + ki, iw = ow * sw - pl + kj;
    col[e] = ih >= 0 && ih < H && iw >= 0 && iw < W ? x[(c * H + ih) * W + iw] : 0.0f;
  }
}

__global__ void channel_bias_kernel(float* y, const float* bias, int64_t O, int64_t P, int64_t n) {
  MD_GRID_LOOP(e, n) y[e] += bias[(e / P) % O];
}

}  // namespace

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t Ho = y.size(2), Wo = y.size(3), P = Ho * Wo, K = C * kh * kw;
  if (y.numel() == 0) return;
  if (K == 0) {
    fill(y, 0.0f);
  } else {
    const Tensor wf = f32_contiguous(w);
    const bool direct = kh == 1 && kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 && p.pad_left == 0 &&
                        p.pad_bottom == 0 && p.pad_right == 0;
    const int64_t tile = std::min(P, std::max<int64_t>(1, kColFloats / K));
    Tensor col = direct ? Tensor() : Tensor::empty({K * tile}, DType::F32, Device::CUDA);
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x.f32() + b * C * H * W;
      float* yb = y.f32() + b * O * P;
      for (int64_t p0 = 0; p0 < P; p0 += tile) {
        const int64_t np = std::min(tile, P - p0);
        GemmOperand a{};
        if (direct) {
          a = {xb + p0, CUDA_R_32F, P, false};
        } else {
          const int64_t n = K * np;
          MD_LAUNCH(im2col_kernel, n, xb, H, W, kh, kw, p.stride_h, p.stride_w, p.pad_top, p.pad_left, Wo, p0, np,
                    col.f32(), n);
          a = {col.f32(), CUDA_R_32F, np, false};
        }
        const GemmOperand wb{wf.f32(), CUDA_R_32F, K, false};
        MD_CHECK(gemm(np, O, K, a, wb, yb + p0, P, nullptr, false),
                 "cuda conv2d: cuBLASLt has no float32 algorithm for " + shape_str(x.shape()) + " * " +
                     shape_str(w.shape()));
      }
    }
  }
  if (bias) {
    const Tensor bf = f32_contiguous(*bias);
    const int64_t n = y.numel();
    MD_LAUNCH(channel_bias_kernel, n, y.f32(), bf.f32(), O, P, n);
  }
}

}  // namespace meshdit::cuda
