// Token and condition embeddings shared by the DiTs.
#pragma once
#include "layers/linear.h"

namespace meshdit {

// diffusers PatchEmbed (SD3): a stride-p conv (here: patchify + linear on the flattened conv weight) plus
// a 2-D sin-cos position table of pos_max x pos_max stored in the checkpoint, centre-cropped to the grid.
struct PatchEmbed {
  Linear proj;       // weight viewed as [dim, C*p*p]
  Tensor pos_embed;  // [1, pos_max^2, dim] or undefined (no position table)
  int patch = 2;
  int64_t pos_max = 0;
  static Result<PatchEmbed> load(const Checkpoint& ck, const std::string& prefix, int64_t in_channels, int64_t dim,
                                 int patch, int64_t pos_max);
  // Only the patch conv, named `conv` ("<conv>.weight" [dim, C, p, p], "<conv>.bias"), without a position table
  // (Motif: its projection_SD3, with positions computed rather than stored).
  static Result<PatchEmbed> load_conv(const Checkpoint& ck, const std::string& conv, int64_t in_channels, int64_t dim,
                                      int patch);
  // The grid is h x w patches; an error when it exceeds the stored table.
  Status check_grid(int64_t h, int64_t w) const;
  // x NCHW -> [B, h*w, dim]
  Tensor operator()(const Tensor& x) const;
};

// The fixed 2-D sin-cos position table of MAE / DiT (get_2d_sincos_pos_embed) for a grid of gh x gw patches,
// row-major, [gh*gw, dim] float32 on the host. Positions are float32 arange, multiplied by base_size / g when
// base_size > 0 (PixArt / Motif: the table of a grid of base_size, stretched over this grid); the first half of
// the channels encodes the column, the second the row, each [sin, cos] of pos * 10000^(-k / (dim/4)) in float64.
Tensor sincos_pos_embed_2d(int64_t dim, int64_t gh, int64_t gw, double base_size = 0);

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
