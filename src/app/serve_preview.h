// A live preview of a generation from its latents, without the VAE: each latent pixel's 16 channels mapped
// to RGB by a fixed linear projection, the one stable-diffusion.cpp's preview and ComfyUI's "latent2rgb"
// use for Flux's 16-channel VAE (ComfyUI comfy/latent_formats.py, Flux.latent_rgb_factors, without its
// bias). It costs one pass over the latents and shows the image's layout and colours at 1/8 of its size;
// for a VAE trained on its own (the built-in model's) the colours are only indicative.
#pragma once
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

// The first image of `latents` at latent resolution (height/8 x width/8) as RGB bytes. Takes Flux's packed
// latents [B, (H/16)*(W/16), 64] (2x2 patches of 16 channels, as diffusers' _pack_latents lays them out) or
// unpacked ones [B, 16, H/8, W/8], or a video's [B, 16, F, H/8, W/8] (its first latent frame); other shapes
// are an error naming the shape.
Result<std::vector<uint8_t>> latent_preview_rgb(const Tensor& latents, int64_t width, int64_t height, int* out_w,
                                                int* out_h);

// The same as a PNG file's bytes.
Result<std::vector<uint8_t>> latent_preview_png(const Tensor& latents, int64_t width, int64_t height);

}  // namespace meshdit
