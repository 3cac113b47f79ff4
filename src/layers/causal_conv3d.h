// Causal 3-D convolutions of the video VAEs (Wan's WanCausalConv3d; Mochi's CogVideoXCausalConv3d with
// pad_mode "replicate"), computed as sums of 2-D convolutions over the temporal taps, on frame-major
// activations [T, B, C, H, W] (a range of frames is then a contiguous [T B, C, H, W] batch of images).
//
// A causal conv pads only in the past, so a video can run chunk by chunk, each call passing the last
// frames of the previous chunk's input (`past`, a CausalCacheSlot carries them): the result equals the
// whole sequence at once while the activations stay bounded by one chunk.
#pragma once
#include <string>
#include <vector>

#include "layers/conv.h"
#include "parallel/band_split.h"

namespace meshdit {

// [T, B, C, H, W] <-> the [T B, C, H, W] batch of images the 2-D layers take.
inline Tensor as_images(const Tensor& x) { return x.reshape({x.size(0) * x.size(1), x.size(2), x.size(3), x.size(4)}); }
inline Tensor as_frames(const Tensor& y, int64_t T) {
  return y.reshape({T, y.size(0) / T, y.size(1), y.size(2), y.size(3)});
}

// Past frames a call site carries between chunks: a 3-tap temporal kernel's reach (diffusers' CACHE_T).
constexpr int64_t kCausalCacheT = 2;

// What one causal conv call site carries from one chunk to the next: the last frames of its input
// sequence so far, and for a temporal resampler whether it has seen its first chunk.
struct CausalCacheSlot {
  Tensor frames;  // [P, B, C, H, W], P <= kCausalCacheT; undefined before the first frame
  bool seen = false;
};

// One decode's or encode's slots, taken in call order anew for every chunk (diffusers' feat_idx): the
// n-th causal conv a chunk runs gets the n-th slot, the one the same conv filled on the previous chunk.
class CausalCache {
 public:
  void begin_chunk() { next_ = 0; }
  CausalCacheSlot& take() {
    if (next_ == slots_.size()) slots_.emplace_back();
    return slots_[next_++];
  }

 private:
  std::vector<CausalCacheSlot> slots_;
  size_t next_ = 0;
};

// How the padding is filled. Zeros: Wan (zero frames before the first, zero rows and columns around).
// Replicate: Mochi (F.pad(mode="replicate"): copies of the first frame before it, of the edge rows and
// columns around).
enum class CausalPad { Zeros, Replicate };

// nn.Conv3d (kt, k, k) with its temporal padding pad_front entirely before the first frame: kt 2-D
// convolutions of shifted frames (tap j reads frame t + j - pad_front of the input), summed.
struct CausalConv3d {
  std::vector<Conv2d> taps;  // weight[:, :, j] for each temporal tap j; only the last holds the bias
  int64_t pad_front = 0;
  int64_t stride_t = 1;
  CausalPad mode = CausalPad::Zeros;
  int pad_s = 0;  // rows / columns of padding on each side

  // Wan's: temporal padding 2 pad_t before the first frame, spatial zero padding pad_s; the weight
  // `prefix.weight` [out, in, kt, k, k], the bias `prefix.bias`.
  static Result<CausalConv3d> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out, int64_t kt,
                                   int64_t k, int64_t pad_t, int pad_s, int64_t stride_t = 1);
  // CogVideoXCausalConv3d(kernel (kt, k, k), stride 1, pad_mode "replicate"): kt - 1 copies of the first
  // frame before it and (k - 1) / 2 copies of the edge rows and columns around (k odd).
  static Result<CausalConv3d> load_replicate(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                             int64_t kt, int64_t k);
  int64_t kt() const { return int64_t(taps.size()); }
  // x [T, B, C, H, W], past [P, B, C, H, W] (P <= pad_front) or undefined -> [T', B, O, H', W']. With
  // `rows` (a split of the images' axis 2 over ranks) x is this rank's band of rows and so is the result:
  // the neighbours' rows stand in for the padding inside the image.
  Tensor operator()(const Tensor& x, const Tensor& past = Tensor(), const BandSplit* rows = nullptr) const;
  // With the call site's cache: past = slot.frames; the slot then keeps the last kCausalCacheT input frames.
  Tensor cached(const Tensor& x, CausalCacheSlot& slot, const BandSplit* rows) const;
};

}  // namespace meshdit
