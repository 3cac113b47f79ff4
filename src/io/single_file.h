// Transformer checkpoints in the single-file layouts that ComfyUI and stable-diffusion.cpp users have,
// read as diffusers-named layers at load time without copying the model:
//
//   "flux-bfl"       Black Forest Labs' flux1-dev / flux1-schnell.safetensors (img_in, double_blocks.N.img_attn.qkv,
//                    single_blocks.N.linear1, final_layer, ...)
//   "sd3-stability"  Stability's sd3.5_large.safetensors (x_embedder.proj, joint_blocks.N.x_block.attn.qkv, ...)
//   "diffusers"      diffusers' own names (a transformer/ folder, a file or a sharded index), passed through
//
// Either single-file layout may sit under "model.diffusion_model." (ComfyUI's all-in-one files); tensors outside
// that prefix (VAE, text encoders) are then ignored. The mapping is diffusers' own
// (loaders/single_file_utils.py: convert_flux_transformer_checkpoint_to_diffusers and
// convert_sd3_transformer_checkpoint_to_diffusers): fused q/k/v (and Flux's single-block q/k/v/mlp) become row
// ranges of the fused tensor, which are views into the mapped file; only the AdaLayerNormContinuous weights whose
// (shift, scale) halves diffusers swaps to (scale, shift) are copied.
#pragma once
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "models/transformers/flux.h"
#include "models/transformers/sd3.h"

namespace meshdit {

// A file, a sharded index or a folder. The result answers to diffusers names and loads with
// FluxTransformer::load / SD3Transformer::load unchanged. `detected_layout` (may be null) receives
// "diffusers", "flux-bfl" or "sd3-stability". A file in neither layout is an error naming it and the first
// tensor that fits no layout.
Result<Checkpoint> open_transformer_checkpoint(const std::string& path_or_dir, std::string* detected_layout);

// Configs from tensor shapes (of a checkpoint with diffusers names, e.g. from open_transformer_checkpoint).
//
// Flux: everything but the RoPE axes is in the shapes; those are FLUX.1's (16, 56, 56) when attention_head_dim is
// 128, else `axes_dims_rope` must be given (an error otherwise, asking for a config.json).
Result<FluxConfig> infer_flux_config(const Checkpoint& ck, const std::vector<int>* axes_dims_rope = nullptr);
// SD3: heads = hidden / head_dim, head_dim from the q-norm size (64 without qk norm), patch size and channels from
// the patch-embedding conv, pos_embed_max_size = sqrt(rows of the position table). sample_size (only the pipelines'
// default image size) is not in the weights and keeps diffusers' default, 128.
Result<SD3Config> infer_sd3_config(const Checkpoint& ck);

// The config of the checkpoint at `path_or_dir`: the config.json in its folder (the folder itself, or the one
// holding the file) when there is one, else inferred from `ck`'s shapes.
Result<FluxConfig> flux_config_for(const std::string& path_or_dir, const Checkpoint& ck);
Result<SD3Config> sd3_config_for(const std::string& path_or_dir, const Checkpoint& ck);

}  // namespace meshdit
