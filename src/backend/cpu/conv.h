// CPU kernels of the image models (VAEs): 2-D convolution as im2col + GEMM over tiles of output pixels,
// group normalisation with a fused activation, and nearest-neighbour 2x upsampling. cpu_backend() puts
// them in its table; nothing else calls them directly.
#pragma once
#include "backend/backend.h"

namespace meshdit::cpu {

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y);
void group_norm(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y);
void upsample_nearest2x(const Tensor& x, Tensor& y);

}  // namespace meshdit::cpu
