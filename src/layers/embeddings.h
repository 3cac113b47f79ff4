// Token and condition embeddings shared by the DiTs.
#pragma once
#include "layers/linear.h"

namespace meshdit {

// diffusers PatchEmbed (SD3): a stride-p conv (here: patchify + linear on the flattened conv weight) plus
// a 2-D sin-cos position table of pos_max x pos_max stored in the checkpoint, centre-cropped to the grid.
struct PatchEmbed {
  Linear proj;     // weight viewed as [dim, C*p*p]
  Tensor pos_embed;  // [1, pos_max^2, dim] or undefined (no position table)
  int patch = 2;
  int64_t pos_max = 0;
  static Result<PatchEmbed> load(const Checkpoint& ck, const std::string& prefix, int64_t in_channels, int64_t dim,
                                 int patch, int64_t pos_max);
  // The grid is h x w patches; an error when it exceeds the stored table.
  Status check_grid(int64_t h, int64_t w) const;
  // x NCHW -> [B, h*w, dim]
  Tensor operator()(const Tensor& x) const;
};

// Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift) followed by an Mlp2 (TimestepEmbedding).
struct TimestepEmbedder {
  int channels = 256;
  bool flip_sin_to_cos = true;
  float downscale_freq_shift = 0;
  float scale = 1;  // Timesteps(scale=1000) when the model is given sigma in [0, 1] (Qwen-Image)
  Mlp2 mlp;
  Tensor operator()(const Tensor& t) const {
    return mlp(ops::timestep_embedding(t, channels, flip_sin_to_cos, downscale_freq_shift, scale));
  }
};

}  // namespace meshdit
