// diffusers AutoencoderKLMochi (the Mochi-1 video VAE): the decoder, run one chunk of latent frames at a
// time with the causal convolutions' cache carried between chunks, and split over ranks by bands of latent
// rows. The encoder is not implemented (its weights, when present, are ignored).
//
// For a pipeline:
//   auto cfg = AutoencoderKLMochiConfig::from_json(dir + "/config.json");       // a diffusers vae/ folder
//   auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
//   auto vae = AutoencoderKLMochi::load(*ck, *cfg);
//   z = latents * latents_std / scaling_factor + latents_mean   (per channel; MochiPipeline's de-normalising)
//   auto video = vae->decode(z, options);   // [B, 3, 6 (F - 1) + 1, 8 h, 8 w], about [-1, 1], not clamped
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/causal_conv3d.h"
#include "layers/conv.h"
#include "layers/linear.h"
#include "parallel/band_split.h"
#include "parallel/comm.h"

namespace meshdit {

// The config; defaults are diffusers' __init__ defaults (the released Mochi-1 VAE). What the decoder does not
// read (in_channels, encoder_block_out_channels, add_attention_block: the encoder's) is parsed for its type
// only. latents_mean / latents_std / scaling_factor are the pipeline's: the model never reads them.
struct AutoencoderKLMochiConfig {
  int64_t in_channels = 15;
  int64_t out_channels = 3;
  std::vector<int> encoder_block_out_channels{64, 128, 256, 384};
  std::vector<int> decoder_block_out_channels{128, 256, 512, 768};
  int64_t latent_channels = 12;
  std::vector<int> layers_per_block{3, 3, 4, 6, 3};
  std::vector<int> temporal_expansions{1, 2, 3};
  std::vector<int> spatial_expansions{2, 2, 2};
  std::vector<bool> add_attention_block{false, true, true, true, true};
  std::vector<float> latents_mean, latents_std;  // latent_channels entries each (diffusers' defaults when absent)
  float scaling_factor = 1.0f;

  // Frames per latent frame (6) and pixels per latent along each spatial axis (8): the products of the
  // expansions.
  int64_t temporal_scale() const;
  int64_t spatial_scale() const;
  static Result<AutoencoderKLMochiConfig> from_json(const std::string& path);
  static Result<AutoencoderKLMochiConfig> from_json_text(const std::string& text, const std::string& name);
};

namespace mochi {

// Activations are frame-major, [T, B, C, H, W] (layers/causal_conv3d.h). `rows`, when set, is the row
// split of a parallel decode: every spatial layer then computes this rank's band of rows.

// MochiResnetBlock3D: x + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))), the norms per frame
// (MochiChunkedGroupNorm3D: nn.GroupNorm(32) on each frame alone), the convs causal 3x3x3 with replicate
// padding.
struct ResnetBlock3D {
  GroupNorm norm1, norm2;
  CausalConv3d conv1, conv2;
  static Result<ResnetBlock3D> load(const Checkpoint& ck, const std::string& prefix, int64_t channels);
  Tensor operator()(const Tensor& x, CausalCache& cache, const BandSplit* rows) const;
};

// MochiMidBlock3D(add_attention=False), as the decoder has it: resnets in a row.
struct MidBlock3D {
  std::vector<ResnetBlock3D> resnets;
  static Result<MidBlock3D> load(const Checkpoint& ck, const std::string& prefix, int64_t channels, int64_t layers);
  Tensor operator()(const Tensor& x, CausalCache& cache, const BandSplit* rows) const;
};

// MochiUpBlock3D: resnets, then a per-position linear to out st s s channels and depth-to-space: each frame
// becomes st frames of s x s times the pixels.
struct UpBlock3D {
  std::vector<ResnetBlock3D> resnets;
  Linear proj;
  int64_t out_channels = 0, st = 1, s = 1;
  static Result<UpBlock3D> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                int64_t layers, int64_t st, int64_t s);
  // With rows set, it is rescaled to the upsampled rows.
  Tensor operator()(const Tensor& x, CausalCache& cache, BandSplit* rows) const;
};

// MochiDecoder3D: a 1x1x1 conv_in, block_in, the up blocks, block_out, SiLU, a linear proj_out.
struct Decoder3D {
  CausalConv3d conv_in;
  MidBlock3D block_in, block_out;
  std::vector<UpBlock3D> up_blocks;
  Linear proj_out;
  static Result<Decoder3D> load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLMochiConfig& cfg);
  // One chunk of n latent frames [n, B, latent_channels, h, w] -> [n temporal_scale, B, out_channels, H, W];
  // the cache carries the causal convs' past from the previous chunk.
  Tensor operator()(const Tensor& z, CausalCache& cache, BandSplit* rows) const;
};

}  // namespace mochi

// After each chunk of a decode: which chunk it was and how long it took (for a progress bar).
struct MochiDecodeProgress {
  int64_t chunk = 0, chunks = 0;  // this chunk's index, of how many
  int64_t latent_frames_done = 0, latent_frames = 0;
  int64_t frames_done = 0, frames = 0;  // output frames written so far, of how many
  double seconds = 0;                   // this chunk's wall time
};

struct MochiDecodeOptions {
  // Latent frames per chunk (each decodes to temporal_scale() frames): the activations' memory is about
  // proportional to it. diffusers' framewise decoding uses 2; the result does not depend on it.
  int64_t chunk_frames = 1;
  std::function<void(const MochiDecodeProgress&)> on_chunk;  // called on every rank of a parallel decode
};

class AutoencoderKLMochi {
 public:
  // Tensors named as diffusers has them (decoder.conv_in.weight, decoder.block_in.resnets.0.conv1.conv.weight, ...).
  static Result<AutoencoderKLMochi> load(const Checkpoint& ck, const AutoencoderKLMochiConfig& cfg);
  const AutoencoderKLMochiConfig& config() const { return cfg_; }

  // z [B, latent_channels, F, h, w] (float, as decode() takes it: the pipeline has de-normalised it) ->
  // [B, out_channels, 6 (F - 1) + 1, 8 h, 8 w] float32 (for the default expansions): the decoder's 6 F frames
  // less the first 5, as diffusers' drop_last_temporal_frames. Not clamped: the trained model's output is
  // about [-1, 1] and a pipeline maps it to [0, 1] and clamps. Decodes options.chunk_frames latent frames at
  // a time: beyond the output the memory is one chunk's activations and two frames of cache per causal conv.
  Result<Tensor> decode(const Tensor& z, const MochiDecodeOptions& options = {}) const;
  // decode() spread over the ranks of `comm` by bands of latent rows: rank r decodes latent rows
  // shard_range(h, P, r) of every frame (and the image rows 8 times those), exchanging one halo row with its
  // neighbours around every 3x3x3 conv and all-reducing the per-frame GroupNorm statistics; every chunk is
  // gathered, and every rank returns the whole video. Equal to decode() up to float32 summation order. Every
  // rank passes the same z and options. A group of one is decode(); h < P is an error.
  Result<Tensor> decode_parallel(const Tensor& z, Communicator& comm, const MochiDecodeOptions& options = {}) const;

 private:
  Status check_latents(const Tensor& z, const MochiDecodeOptions& options) const;
  Result<Tensor> decode_impl(const Tensor& z, Communicator* comm, const MochiDecodeOptions& options) const;

  AutoencoderKLMochiConfig cfg_;
  mochi::Decoder3D decoder_;
};

}  // namespace meshdit
