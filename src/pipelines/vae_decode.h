// The last stage of every image pipeline: denoised latents to pixels.
#pragma once
#include "core/error.h"
#include "core/tensor.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_wan.h"
#include "parallel/comm.h"

namespace meshdit {

// latents [B, C, h, w] as denoised -> images [B, H, W, 3] float32 in [0, 1] (diffusers output_type="np"):
//   z = latents / scaling_factor + shift_factor (the VAE config's), image = VAE decode of z,
//   (image / 2 + 0.5) clamped to [0, 1], channels last.
// The decode runs whole, in tiles with `tiling` (bounded memory, diffusers' tile size and overlap), or,
// without tiling on a `vae_group` of several ranks, by bands of latent rows across them. Every rank of the
// group returns the whole images.
Result<Tensor> decode_images(const AutoencoderKL& vae, const Tensor& latents, Communicator& vae_group, bool tiling);
// The decode alone, of latents already scaled: z [B, C, h, w] -> [B, 3, H, W] in about [-1, 1], whole, tiled or
// by bands across `vae_group` as above.
Result<Tensor> decode_latents(const AutoencoderKL& vae, const Tensor& z, Communicator& vae_group, bool tiling);

// The same for the Wan-style causal 3-D VAE (Qwen-Image) on one frame: latents [B, z_dim, 1, h, w] ->
// z = latents / (1 / latents_std) + latents_mean per channel (the VAE config's, rounded as diffusers rounds
// them) -> decode -> frame 0 -> images [B, H, W, 3] in [0, 1]. On a `vae_group` of several ranks the decode
// is split by bands of latent rows; every rank returns the whole images.
Result<Tensor> decode_wan_images(const AutoencoderKLWan& vae, const Tensor& latents, Communicator& vae_group);

// The same over every frame (video pipelines): latents [B, z_dim, f, h, w] -> frames [B, F, H, W, 3] in [0, 1],
// F = 1 + 4 (f - 1).
Result<Tensor> decode_wan_video(const AutoencoderKLWan& vae, const Tensor& latents, Communicator& vae_group);

// [-1, 1] images [B, 3, H, W] -> [B, H, W, 3] in [0, 1] (VaeImageProcessor.postprocess, output_type="np").
Tensor postprocess_images(const Tensor& decoded);
// [-1, 1] video [B, 3, F, H, W] -> frames [B, F, H, W, 3] in [0, 1] (VideoProcessor.postprocess_video, "np").
Tensor postprocess_video(const Tensor& decoded);

}  // namespace meshdit
