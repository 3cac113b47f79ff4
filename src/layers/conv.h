// Layers of convolutional image models (VAEs): torch.nn.Conv2d and torch.nn.GroupNorm, loaded from a
// checkpoint like Linear: weights stay views into the mapped file in their stored dtype.
#pragma once
#include <string>

#include "backend/ops.h"
#include "io/checkpoint.h"

namespace meshdit {

// nn.Conv2d(in, out, kernel, stride, padding) with groups = 1: weight [out, in, k, k], bias [out] or none.
struct Conv2d {
  Tensor weight;
  Tensor bias;  // undefined when the layer has none
  Conv2dParams params;

  // Symmetric padding on every side, as nn.Conv2d's `padding`.
  static Result<Conv2d> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out, int64_t kernel,
                             int stride = 1, int padding = 0, bool has_bias = true);
  int64_t in_channels() const { return weight.size(1); }
  int64_t out_channels() const { return weight.size(0); }
  Tensor operator()(const Tensor& x) const { return ops::conv2d(x, weight, bias.defined() ? &bias : nullptr, params); }
};

// nn.GroupNorm(groups, channels, eps, affine), optionally followed by a fused activation (the SiLU every
// ResnetBlock2D applies right after its norms).
struct GroupNorm {
  Tensor weight, bias;  // undefined without affine
  int64_t groups = 32;
  float eps = 1e-6f;

  static Result<GroupNorm> load(const Checkpoint& ck, const std::string& prefix, int64_t groups, int64_t channels,
                                float eps, bool affine = true);
  Tensor operator()(const Tensor& x, Act act = Act::None) const {
    return ops::group_norm(x, groups, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr, eps, act);
  }
};

}  // namespace meshdit
