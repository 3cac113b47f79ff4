// A feature map spread over the ranks of a group in contiguous bands along one axis: an image [B, C, H, W]
// by rows (axis 2) or columns (axis 3), a video [B, C, T, H, W] by frames (axis 2) or rows (axis 3).
// Rank r holds band r, in rank order, so the whole tensor is the bands concatenated along the axis.
//
// What a layer needs across bands is the part of its input its stencil reaches beyond the band (the halo,
// exchanged with the neighbours), reductions over the whole axis (done by the caller with all_reduce_)
// and, at the end, the whole tensor (gather). Per-position layers (1x1 convs, activations, residuals) run
// on the band as they are.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace meshdit {

class BandSplit {
 public:
  // Rank r holds shard_range(extent, P, r) of the axis: the first extent % P bands get one more entry.
  BandSplit(Communicator& comm, int64_t axis, int64_t extent);
  // Given band sizes, one per rank of comm (all >= 1): for a resampling that does not scale every band
  // alike (a causal temporal upsampler that keeps the first frame single), build the next split this way.
  BandSplit(Communicator& comm, int64_t axis, std::vector<int64_t> sizes);

  Communicator& comm() const { return *comm_; }
  int64_t axis() const { return axis_; }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  // The neighbours holding the bands before and after this one; -1 at the ends of the axis.
  int prev() const { return rank() > 0 ? rank() - 1 : -1; }
  int next() const { return rank() + 1 < size() ? rank() + 1 : -1; }

  // Sizes along the axis at the current resolution.
  const std::vector<int64_t>& sizes() const { return sizes_; }
  int64_t band_size(int r) const { return sizes_[size_t(r)]; }
  int64_t band_size() const { return band_size(rank()); }
  int64_t total() const;
  Range band(int r) const;  // rank r's entries of the whole axis
  Range band() const { return band(rank()); }

  // After a resampling of the axis by an integer factor (nearest 2x upsampling: 2): every band scales alike.
  void upsampled(int64_t factor = 2);

  // This rank's band of a tensor holding the whole axis (a view).
  Tensor local(const Tensor& whole) const;
  // Every rank's band concatenated along the axis: the whole tensor, on every rank. One all-gather of the
  // bands padded to the largest. Collective.
  Tensor gather(const Tensor& band) const;

 private:
  Communicator* comm_;
  int64_t axis_;
  std::vector<int64_t> sizes_;
};

// How far a stencil reaches beyond a band: `before` entries of the previous band, `after` of the next.
struct Halo {
  int64_t before = 0, after = 0;
};

// The halo of a stride-1 convolution along the split axis whose output keeps the input's length
// (kernel == pad_before + pad_after + 1): output entry i reads inputs [i - pad_before, i + pad_after]. A
// 3x3 conv with padding 1: {1, 1}; a causal temporal conv of kernel k (all its padding in front): {k - 1, 0}.
// Anything else (a stride, a kernel that changes the length) cannot run on bands: an internal error.
Halo conv_halo(int64_t kernel, int64_t stride, int64_t pad_before, int64_t pad_after);

// A band with the neighbours' halo entries around it, and how many were added on each side: none at the
// ends of the whole axis, where the layer pads as it pads the whole tensor (pad_before - before entries).
struct HaloBand {
  Tensor x;
  int64_t before = 0, after = 0;
};

// Exchanges halos with both neighbours: halo.before entries of the previous band's end, halo.after of the
// next band's start. Collective between neighbours (every rank of the split calls it with the same halo);
// a band must be at least as long as the halo.
HaloBand exchange_halo(const Tensor& band, const Halo& halo, const BandSplit& split);

}  // namespace meshdit
