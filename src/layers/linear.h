#pragma once
#include <string>

#include "backend/ops.h"
#include "io/checkpoint.h"

namespace meshdit {

// y = x W^T + b, weight [out, in] kept in its checkpoint dtype (a view into the mapped file).
struct Linear {
  Tensor weight;
  Tensor bias;  // undefined when the layer has none

  static Result<Linear> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                             bool has_bias = true);
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  Tensor operator()(const Tensor& x, Act act = Act::None) const {
    return ops::linear(x, weight, bias.defined() ? &bias : nullptr, act);
  }
};

// Two linears with an activation between: diffusers' TimestepEmbedding and PixArtAlphaTextProjection
// (linear_1, act, linear_2).
struct Mlp2 {
  Linear linear_1, linear_2;
  Act act = Act::SiLU;
  static Result<Mlp2> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t hidden, int64_t out,
                           Act act);
  Tensor operator()(const Tensor& x) const { return linear_2(linear_1(x, act)); }
};

}  // namespace meshdit
