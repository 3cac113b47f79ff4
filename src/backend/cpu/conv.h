// CPU kernels of the image models (VAEs): 2-D convolution as im2col + GEMM over tiles of output pixels,
// group normalisation with a fused activation (whole, or as its statistics and
// normalisation steps for images split over ranks), and nearest-neighbour 2x upsampling. cpu_backend() puts
// them in its table; nothing else calls them directly.
#pragma once
#include "backend/backend.h"

namespace meshdit::cpu {

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y);
void group_norm(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y);
void group_sums(const Tensor& x, int64_t groups, const Tensor* mean, Tensor& out);
void group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* w,
                      const Tensor* b, Act act, Tensor& y);
void upsample_nearest2x(const Tensor& x, Tensor& y);

}  // namespace meshdit::cpu
