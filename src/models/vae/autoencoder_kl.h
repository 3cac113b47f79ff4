// diffusers AutoencoderKL: the KL-regularised convolutional VAE of Stable Diffusion (4 latent channels)
// and of SD3 / Flux (16 latent channels), decode and encode, plus diffusers' tiled decode for large images.
#pragma once
#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/conv.h"
#include "layers/linear.h"
#include "parallel/comm.h"

namespace meshdit {

// diffusers AutoencoderKL config; defaults are diffusers' __init__ defaults. force_upcast is ignored (the
// VAE always computes in float32 here), and so are latents_mean / latents_std (pipelines' business: the
// model never reads them).
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types{"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types{"UpDecoderBlock2D"};
  std::vector<int> block_out_channels{64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;  // the first entry when the file gives a list
  float scaling_factor = 0.18215f;
  float shift_factor = 0.0f;  // null or absent: no shift
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Image pixels per latent along each axis: one 2x resampling between consecutive block levels.
  int64_t spatial_scale() const { return int64_t(1) << (block_out_channels.size() - 1); }
  static Result<AutoencoderKLConfig> from_json(const std::string& path);
  static Result<AutoencoderKLConfig> from_json_text(const std::string& text, const std::string& name);
};

// The posterior of encode(): a diagonal Gaussian (DiagonalGaussianDistribution), logvar clamped to
// [-30, 20]; its mode is the mean.
struct DiagonalGaussian {
  Tensor mean, logvar;  // [B, latent_channels, h, w]
};

namespace vae {

// diffusers ResnetBlock2D without time embedding (temb_channels=None, output_scale_factor 1):
//   h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))); out = shortcut(x) + h
// where the shortcut is a 1x1 conv when the channel count changes.
struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Conv2d> conv_shortcut;
  static Result<ResnetBlock2D> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                    int64_t groups);
  Tensor operator()(const Tensor& x) const;
};

// The mid block's single Attention (group_norm, residual_connection, rescale_output_factor 1): the
// feature map's positions are the tokens and its channels the features, heads = channels / head_dim.
struct SpatialSelfAttention {
  GroupNorm group_norm;
  Linear to_q, to_k, to_v, to_out;
  int64_t heads = 1;
  static Result<SpatialSelfAttention> load(const Checkpoint& ck, const std::string& prefix, int64_t channels,
                                           int64_t head_dim, int64_t groups);
  Tensor operator()(const Tensor& x) const;
};

// UNetMidBlock2D(num_layers=1): resnet, [attention], resnet.
struct MidBlock2D {
  ResnetBlock2D resnet_0, resnet_1;
  std::optional<SpatialSelfAttention> attention;
  static Result<MidBlock2D> load(const Checkpoint& ck, const std::string& prefix, int64_t channels, int64_t groups,
                                 bool add_attention);
  Tensor operator()(const Tensor& x) const;
};

// DownEncoderBlock2D: resnets, then (except on the last level) Downsample2D with padding=0, i.e. a zero pad
// of one row at the bottom and one column at the right followed by a stride-2 3x3 conv.
struct DownEncoderBlock2D {
  std::vector<ResnetBlock2D> resnets;
  std::optional<Conv2d> downsample;
  Tensor operator()(Tensor x) const;  // by value: the block's input is freed as soon as it is used
};

// UpDecoderBlock2D: resnets, then (except on the last level) Upsample2D: nearest 2x, 3x3 conv.
struct UpDecoderBlock2D {
  std::vector<ResnetBlock2D> resnets;
  std::optional<Conv2d> upsample_conv;
  Tensor operator()(Tensor x) const;  // by value: the block's input is freed as soon as it is used
};

// Encoder: conv_in, down blocks, mid block, GroupNorm + SiLU, conv_out to 2 x latent channels (mean, logvar).
struct Encoder {
  Conv2d conv_in, conv_out;
  std::vector<DownEncoderBlock2D> down_blocks;
  MidBlock2D mid_block;
  GroupNorm conv_norm_out;
  static Result<Encoder> load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLConfig& cfg);
  Tensor operator()(const Tensor& x, const Hooks* hooks) const;
};

// Decoder: conv_in, mid block, up blocks (layers_per_block + 1 resnets each), GroupNorm + SiLU, conv_out.
struct Decoder {
  Conv2d conv_in, conv_out;
  MidBlock2D mid_block;
  std::vector<UpDecoderBlock2D> up_blocks;
  GroupNorm conv_norm_out;
  static Result<Decoder> load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLConfig& cfg);
  Tensor operator()(const Tensor& z, const Hooks* hooks) const;
};

}  // namespace vae

// diffusers' tiled_decode around any decoder `decode_tile` that maps a latent tile [B, C, h, w] to an image
// [B, C', scale h, scale w]. Tiles of tile x tile latents start every stride = tile - overlap latents (the
// last ones in a row or column are smaller where the latent ends); each decoded tile is blended linearly
// into the tile above and then the tile to its left (both already blended) over overlap * scale pixel
// rows / columns, and contributes its first stride * scale rows and columns to the image. diffusers'
// defaults correspond to tile = sample_size / scale and overlap = tile / 4.
using TileDecoder = std::function<Result<Tensor>(const Tensor& z_tile)>;
Result<Tensor> tiled_decode(const Tensor& z, int64_t tile, int64_t overlap, int64_t scale,
                            const TileDecoder& decode_tile);

class AutoencoderKL {
 public:
  static Result<AutoencoderKL> load(const Checkpoint& ck, const AutoencoderKLConfig& cfg);
  const AutoencoderKLConfig& config() const { return cfg_; }

  // z [B, latent_channels, h, w] as the decoder takes it (a pipeline first computes
  // latents / scaling_factor + shift_factor) -> image [B, out_channels, scale h, scale w], not clamped.
  // Hooks: hook.decoder.conv_in, hook.decoder.mid_block, hook.decoder.up_blocks.<i>.
  Result<Tensor> decode(const Tensor& z, const Hooks* hooks = nullptr) const;
  // decode() spread over the ranks of `comm` by bands of latent rows: rank r decodes latent rows
  // shard_range(h, P, r) (and the image rows spatial_scale() times those), exchanging one halo row with its neighbours
  // around every 3x3 conv, reducing every GroupNorm's statistics over the group and gathering the mid-block
  // attention's keys and values, then gathers the image so that every rank returns all of it. Equal to
  // decode() up to float32 summation order. Every rank passes the same z (and hooks on all or none: a hook
  // gathers its tensor, a collective). A group of one is decode(); h < P is an error.
  Result<Tensor> decode_parallel(const Tensor& z, Communicator& comm, const Hooks* hooks = nullptr) const;
  // image [B, in_channels, H, W] in [-1, 1] -> posterior over latents [B, latent_channels, H/scale, W/scale].
  // Hooks: hook.encoder.mid_block.
  Result<DiagonalGaussian> encode(const Tensor& image, const Hooks* hooks = nullptr) const;

  // decode() one overlapping latent tile at a time, blended as diffusers' tiled_decode: memory is bounded
  // by the tile, not the image. Not equal to decode(): every GroupNorm normalises with the statistics of
  // its tile rather than of the whole image (and the mid-block attention sees only the tile, the convs zero
  // padding at its borders), so tiles differ from the untiled decode; the linear blend hides the seams.
  // 0 <= overlap < tile (latent pixels).
  Result<Tensor> decode_tiled(const Tensor& z, int64_t tile, int64_t overlap) const;
  // diffusers' tile size: tile_latent_min_size = sample_size / scale, with overlap tile / 4.
  int64_t default_tile() const { return std::max<int64_t>(1, cfg_.sample_size / cfg_.spatial_scale()); }

 private:
  Status check_latents(const Tensor& z) const;
  Tensor decode_unchecked(const Tensor& z, const Hooks* hooks) const;

  AutoencoderKLConfig cfg_;
  vae::Encoder encoder_;
  vae::Decoder decoder_;
  std::optional<Conv2d> quant_conv_, post_quant_conv_;
};

}  // namespace meshdit
