// diffusers AutoencoderKLWan (the causal 3-D video VAE of Wan2.1, also Wan2.2-T2V-A14B's) and
// AutoencoderKLQwenImage (the same network, used by Qwen-Image on one frame): decode and encode, one frame
// chunk at a time with the causal convolutions' feature cache, and a decode split over ranks by bands of
// latent rows.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/causal_conv3d.h"
#include "layers/conv.h"
#include "models/vae/autoencoder_kl.h"  // DiagonalGaussian
#include "parallel/band_split.h"
#include "parallel/comm.h"

namespace meshdit {

// The config of either class; defaults are diffusers' __init__ defaults. AutoencoderKLQwenImage names the
// image channels `input_channels` (both ends); AutoencoderKLWan has in_channels / out_channels. What is not
// implemented is rejected by from_json: Wan2.2's residual blocks (is_residual), patch_size, attn_scales
// (attention inside the down/up blocks). latents_mean / latents_std are the pipelines' business (the model
// never reads them): a pipeline decodes latents * std + mean per channel.
struct AutoencoderKLWanConfig {
  int64_t base_dim = 96;
  int64_t decoder_base_dim = 0;  // null in the file: base_dim
  int64_t z_dim = 16;
  std::vector<int> dim_mult{1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<bool> temperal_downsample{false, true, true};  // diffusers' spelling
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<float> latents_mean, latents_std;  // z_dim entries each (diffusers' defaults when absent)

  int64_t decoder_dim() const { return decoder_base_dim > 0 ? decoder_base_dim : base_dim; }
  // Pixels per latent along each spatial axis, and frames per latent frame after the first.
  int64_t spatial_scale() const { return int64_t(1) << (dim_mult.size() - 1); }
  int64_t temporal_scale() const;
  static Result<AutoencoderKLWanConfig> from_json(const std::string& path);
  static Result<AutoencoderKLWanConfig> from_json_text(const std::string& text, const std::string& name);
};

namespace wan {

// The causal conv and its per-chunk cache are the shared layer's (layers/causal_conv3d.h), zero-padded here.
constexpr int64_t kCacheT = kCausalCacheT;
using CacheSlot = CausalCacheSlot;
using FeatureCache = CausalCache;
using CausalConv3d = meshdit::CausalConv3d;

// Activations are frame-major, [T, B, C, H, W], so that a range of frames is a contiguous [T B, C, H, W]
// batch of images for the 2-D convolutions. `rows`, when set, is the row split of a parallel decode: every
// spatial layer then computes this rank's band of rows (layers/spatial_split.h).

// WanRMS_norm: F.normalize over channels * sqrt(C) * gamma (no bias in these models), on [N, C, ...].
struct ChannelRMSNorm {
  Tensor weight;  // gamma, [C]
  static Result<ChannelRMSNorm> load(const Checkpoint& ck, const std::string& prefix, int64_t channels,
                                     bool images);
  // x [N, C, H, W] -> normalised, optionally followed by SiLU.
  Tensor operator()(const Tensor& x, bool silu) const;
  // x [N, L, C] (channels last) -> normalised.
  Tensor channels_last(const Tensor& x) const;
};

// WanResidualBlock: shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))), the shortcut a 1x1x1 conv when
// the channel count changes.
struct ResidualBlock {
  ChannelRMSNorm norm1, norm2;
  CausalConv3d conv1, conv2;
  std::optional<CausalConv3d> conv_shortcut;
  static Result<ResidualBlock> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out);
  Tensor operator()(const Tensor& x, FeatureCache& cache, const BandSplit* rows) const;
};

// WanAttentionBlock: single-head self-attention over the positions of each frame, 1x1 projections.
struct AttentionBlock {
  ChannelRMSNorm norm;
  Tensor qkv_weight, qkv_bias, proj_weight, proj_bias;  // [3C, C], [3C], [C, C], [C]
  static Result<AttentionBlock> load(const Checkpoint& ck, const std::string& prefix, int64_t channels);
  Tensor operator()(const Tensor& x, const BandSplit* rows) const;
};

// WanMidBlock(num_layers=1): resnet, attention, resnet.
struct MidBlock {
  ResidualBlock resnet_0, resnet_1;
  AttentionBlock attention;
  static Result<MidBlock> load(const Checkpoint& ck, const std::string& prefix, int64_t channels);
  Tensor operator()(const Tensor& x, FeatureCache& cache, const BandSplit* rows) const;
};

// WanResample upsample2d / upsample3d: [time_conv doubling the frames, except on the first chunk], then per
// frame nearest 2x and a 3x3 conv to half the channels.
struct Upsample {
  Conv2d conv;
  std::optional<CausalConv3d> time_conv;
  Tensor operator()(const Tensor& x, FeatureCache& cache, BandSplit* rows) const;
};

// WanResample downsample2d / downsample3d: per frame a zero pad (0, 1, 0, 1) and a stride-2 3x3 conv, then
// [a stride-2 temporal conv over the previous chunk's last frame and this chunk's, except on the first].
struct Downsample {
  Conv2d conv;
  std::optional<CausalConv3d> time_conv;
  Tensor operator()(const Tensor& x, FeatureCache& cache) const;
};

struct EncoderLevel {
  std::vector<ResidualBlock> resnets;
  std::optional<Downsample> downsample;
};

struct UpBlock {
  std::vector<ResidualBlock> resnets;
  std::optional<Upsample> upsample;
};

// WanEncoder3d (is_residual false): conv_in, levels of resnets and downsamplers, mid block, RMS norm + SiLU,
// conv_out to 2 z_dim channels.
struct Encoder {
  CausalConv3d conv_in, conv_out;
  std::vector<EncoderLevel> levels;
  MidBlock mid_block;
  ChannelRMSNorm norm_out;
  static Result<Encoder> load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLWanConfig& cfg);
  Tensor operator()(const Tensor& x, FeatureCache& cache) const;  // one chunk, [T, B, C, H, W]
};

// WanDecoder3d (is_residual false): conv_in, mid block, up blocks, RMS norm + SiLU, conv_out.
struct Decoder {
  CausalConv3d conv_in, conv_out;
  MidBlock mid_block;
  std::vector<UpBlock> up_blocks;
  ChannelRMSNorm norm_out;
  static Result<Decoder> load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLWanConfig& cfg);
  // One chunk (one latent frame), [1, B, z, h, w] -> [1 or temporal_scale frames, B, out, H, W]; with rows
  // set, the band of rows `rows` holds (rescaled on the way) to this rank's band of the image rows.
  Tensor operator()(const Tensor& z, FeatureCache& cache, BandSplit* rows, Tensor* mid = nullptr) const;
};

}  // namespace wan

class AutoencoderKLWan {
 public:
  static Result<AutoencoderKLWan> load(const Checkpoint& ck, const AutoencoderKLWanConfig& cfg);
  const AutoencoderKLWanConfig& config() const { return cfg_; }

  // z [B, z_dim, F, h, w] as the decoder takes it (a pipeline first computes latents * std + mean) ->
  // [B, out_channels, 1 + (F - 1) temporal_scale(), spatial_scale() h, spatial_scale() w], clamped to
  // [-1, 1]. Decodes one latent frame at a time (the first gives one frame, each later one temporal_scale()),
  // so activations are bounded by one chunk. Hooks: hook.decoder.mid_block ([B, C, F, h, w]).
  Result<Tensor> decode(const Tensor& z, const Hooks* hooks = nullptr) const;
  // decode() spread over the ranks of `comm` by bands of latent rows: rank r decodes latent rows
  // shard_range(h, P, r) of every frame (and the image rows spatial_scale() times those), exchanging halo
  // rows with its neighbours around every 3x3 conv and gathering the mid-block attention's keys and values
  // (the RMS norms are per position: no statistics cross ranks); every rank returns the whole video. Equal
  // to decode() up to float32 summation order. Every rank passes the same z (and hooks on all or none). A
  // group of one is decode(); h < P is an error.
  Result<Tensor> decode_parallel(const Tensor& z, Communicator& comm, const Hooks* hooks = nullptr) const;
  // video [B, in_channels, T, H, W] in [-1, 1] (H, W multiples of spatial_scale()) -> the posterior over
  // latents [B, z_dim, 1 + (T - 1) / 4, H / scale, W / scale]: frame 0 alone, then chunks of 4 frames
  // (trailing frames short of a chunk are dropped, as diffusers does); logvar clamped to [-30, 20].
  Result<DiagonalGaussian> encode(const Tensor& video) const;

 private:
  Status check_latents(const Tensor& z) const;
  Result<Tensor> decode_impl(const Tensor& z, Communicator* comm, const Hooks* hooks) const;

  AutoencoderKLWanConfig cfg_;
  wan::Encoder encoder_;
  wan::Decoder decoder_;
  wan::CausalConv3d quant_conv_, post_quant_conv_;
};

}  // namespace meshdit
