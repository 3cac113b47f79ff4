#pragma once
#include <vector>

#include "core/hooks.h"
#include "layers/embeddings.h"
#include "layers/joint_block.h"

namespace meshdit {

// diffusers SD3Transformer2DModel config; defaults are diffusers' __init__ defaults.
struct SD3Config {
  int64_t sample_size = 128;
  int patch_size = 2;
  int64_t in_channels = 16;
  int64_t num_layers = 18;
  int64_t attention_head_dim = 64;
  int64_t num_attention_heads = 18;
  int64_t joint_attention_dim = 4096;
  int64_t caption_projection_dim = 1152;
  int64_t pooled_projection_dim = 2048;
  int64_t out_channels = 16;
  int64_t pos_embed_max_size = 96;
  std::vector<int> dual_attention_layers;
  std::string qk_norm;  // "" or "rms_norm"
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  static Result<SD3Config> from_json(const std::string& path);
  // The same from the text of a config.json; `name` names it in messages.
  static Result<SD3Config> from_json_text(const std::string& text, const std::string& name);
};

class SD3Transformer {
 public:
  // par: this rank's TP and SP groups (nullptr: one device). Each rank loads only its TP shard.
  static Result<SD3Transformer> load(const Checkpoint& ck, const SD3Config& cfg, const ParallelContext* par = nullptr);
  const SD3Config& config() const { return cfg_; }
  // hidden_states [B, C, H, W] latents, encoder_hidden_states [B, L, joint_attention_dim],
  // pooled_projections [B, pooled_projection_dim], timestep [B] in [0, 1000] -> velocity [B, C, H, W].
  Result<Tensor> forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                         const Tensor& pooled_projections, const Tensor& timestep, const Hooks* hooks = nullptr) const;

 private:
  SD3Config cfg_;
  ParallelContext par_;
  PatchEmbed pos_embed_;
  TimestepEmbedder timestep_embedder_;
  Mlp2 text_embedder_;
  Linear context_embedder_;
  std::vector<JointTransformerBlock> transformer_blocks_;
  AdaLayerNormContinuous norm_out_;
  Linear proj_out_;
};

// The config from tensor shapes (a checkpoint with diffusers names): heads = hidden / head_dim, head_dim from
// the q-norm size (64 without qk norm), patch size and channels from the patch-embedding conv,
// pos_embed_max_size = sqrt(rows of the position table). sample_size (only the pipelines' default image size)
// is not in the weights and keeps diffusers' default, 128.
Result<SD3Config> infer_sd3_config(const Checkpoint& ck);
// The config.json beside the checkpoint at `path_or_dir` when there is one, else inferred from `ck`.
Result<SD3Config> sd3_config_for(const std::string& path_or_dir, const Checkpoint& ck);

}  // namespace meshdit
