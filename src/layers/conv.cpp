#include "layers/conv.h"

namespace meshdit {

Result<Conv2d> Conv2d::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out, int64_t kernel,
                            int stride, int padding, bool has_bias) {
  Conv2d c;
  MD_TRY(c.weight, ck.get(prefix + ".weight", {out, in, kernel, kernel}));
  if (has_bias) {
    MD_TRY(c.bias, ck.get(prefix + ".bias", {out}));
  }
  c.params.stride_h = c.params.stride_w = stride;
  c.params.pad_top = c.params.pad_left = c.params.pad_bottom = c.params.pad_right = padding;
  return c;
}

Result<GroupNorm> GroupNorm::load(const Checkpoint& ck, const std::string& prefix, int64_t groups, int64_t channels,
                                  float eps, bool affine) {
  if (groups < 1 || channels % groups != 0)
    return make_error(prefix + ": " + std::to_string(groups) + " groups do not divide " + std::to_string(channels) +
                      " channels");
  GroupNorm n;
  n.groups = groups;
  n.eps = eps;
  if (affine) {
    MD_TRY(n.weight, ck.get(prefix + ".weight", {channels}));
    MD_TRY(n.bias, ck.get(prefix + ".bias", {channels}));
  }
  return n;
}

}  // namespace meshdit
