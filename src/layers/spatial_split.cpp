#include "layers/spatial_split.h"

#include "backend/model_ops.h"
#include "parallel/collectives.h"

namespace meshdit {

Tensor conv2d_split(const Conv2d& conv, const Tensor& band, const BandSplit& split) {
  const int64_t a = split.axis();
  MD_CHECK(band.dim() == 4 && (a == 2 || a == 3), "conv2d_split: needs [B, C, H, W] split by rows or columns, got " +
                                                      shape_str(band.shape()) + " split along axis " +
                                                      std::to_string(a));
  const bool rows = a == 2;
  Conv2dParams p = conv.params;
  int& pad_before = rows ? p.pad_top : p.pad_left;
  int& pad_after = rows ? p.pad_bottom : p.pad_right;
  const Halo halo = conv_halo(conv.weight.size(a), rows ? p.stride_h : p.stride_w, pad_before, pad_after);
  if (halo.before == 0 && halo.after == 0) return conv(band);
  const HaloBand ext = exchange_halo(band, halo, split);
  pad_before -= int(ext.before);
  pad_after -= int(ext.after);
  return ops::conv2d(ext.x, conv.weight, conv.bias.defined() ? &conv.bias : nullptr, p);
}

Tensor group_norm_split(const GroupNorm& norm, const Tensor& band, Act act, const BandSplit& split) {
  if (split.size() == 1) return norm(band, act);
  MD_CHECK(band.dim() > split.axis() && split.axis() >= 2 && band.size(split.axis()) == split.band_size(),
           "group_norm_split: " + shape_str(band.shape()) + " is not this rank's band along axis " +
               std::to_string(split.axis()));
  const int64_t G = norm.groups;
  int64_t per_group = band.size(1) / G;  // elements of one (batch, group) in the whole tensor
  for (int64_t d = 2; d < band.dim(); ++d) per_group *= d == split.axis() ? split.total() : band.size(d);
  const double count = double(per_group);
  Tensor sums = ops::group_sums(band, G);
  all_reduce_(sums, split.comm());
  const Tensor mean = ops::mean_from_sums(sums, count);
  Tensor ssd = ops::group_sums(band, G, &mean);
  all_reduce_(ssd, split.comm());
  const Tensor rstd = ops::rstd_from_sums(ssd, count, double(norm.eps));
  return ops::group_norm_apply(band, G, mean, rstd, norm.weight.defined() ? &norm.weight : nullptr,
                               norm.bias.defined() ? &norm.bias : nullptr, act);
}

Tensor attention_split(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const BandSplit& split,
                       int64_t tokens_per_entry) {
  MD_CHECK(k.dim() == 4 && k.shape() == v.shape() && k.size(1) == split.band_size() * tokens_per_entry,
           "attention_split: k/v " + shape_str(k.shape()) + " do not hold " +
               std::to_string(split.band_size() * tokens_per_entry) + " tokens of this band");
  if (split.size() == 1) return ops::attention(q, k, v, scale);
  const int64_t H = k.size(2);
  std::vector<int64_t> tokens = split.sizes();
  for (int64_t& t : tokens) t *= tokens_per_entry;
  // Keys and values travel together, as heads [0, H) and [H, 2H) of one tensor, in one all-gather.
  const Tensor kv = all_gather_v(concat({k, v}, 2), 1, split.comm(), tokens);  // [B, total, 2H, D]
  return ops::attention(q, kv.slice(2, 0, H), kv.slice(2, H, 2 * H), scale);
}

void report_split(const Hooks* hooks, const std::string& name, const Tensor& band, const BandSplit& split) {
  if (hooks && *hooks) report(hooks, name, split.gather(band));
}

}  // namespace meshdit
