// Layers of convolutional models (VAEs) on a feature map split into bands over ranks (parallel/band_split.h):
// each returns this rank's band of what the layer computes on the whole tensor, so a model runs its usual
// structure on bands by calling these in place of the plain layers. Every call is collective over the
// split's group. A group of one computes exactly what the plain layer does.
#pragma once
#include <string>

#include "core/hooks.h"
#include "layers/conv.h"
#include "parallel/band_split.h"

namespace meshdit {

// Conv2d on a band split by rows (axis 2) or columns (axis 3) of [B, C, H, W]: the neighbours' halo entries
// stand in for the zero padding inside the image, which stays only at its edges. Along the split axis the
// conv must keep the length (stride 1, kernel = padding before + after + 1; see conv_halo).
Tensor conv2d_split(const Conv2d& conv, const Tensor& band, const BandSplit& split);

// GroupNorm (then `act`) with the statistics of the whole tensor, for [B, C, ...] split along any axis >= 2:
// group_norm's two passes (mean, then mean squared deviation from it), each a local sum all-reduced.
Tensor group_norm_split(const GroupNorm& norm, const Tensor& band, Act act, const BandSplit& split);

// Attention of this band's queries over the keys and values of every band: q, k, v [B, n, H, D] hold the
// band's tokens in the whole tensor's token order, `tokens_per_entry` of them per entry of the split axis
// (a row's width when split by rows, a frame's H W when split by frames). One all-gather of k and v.
Tensor attention_split(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const BandSplit& split,
                       int64_t tokens_per_entry);

// A hook on a split model reports the whole tensor, as the model on one device does. Gathering is
// collective, so it happens only when someone listens, and every rank must listen alike.
void report_split(const Hooks* hooks, const std::string& name, const Tensor& band, const BandSplit& split);

}  // namespace meshdit
