#pragma once
#include "layers/linear.h"

namespace meshdit {

// diffusers FeedForward: net.0.proj (with its activation), net.2 back to dim.
struct FeedForward {
  Linear proj_in, proj_out;
  Act act = Act::GeluTanh;
  static Result<FeedForward> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                  int64_t dim_out, Act act);
  Tensor operator()(const Tensor& x) const { return proj_out(proj_in(x, act)); }
};

}  // namespace meshdit
