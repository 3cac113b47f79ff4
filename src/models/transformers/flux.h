#pragma once
#include <vector>

#include "core/hooks.h"
#include "layers/embeddings.h"
#include "layers/joint_block.h"

namespace meshdit {

// diffusers FluxTransformer2DModel config; defaults are diffusers' __init__ defaults (FLUX.1).
struct FluxConfig {
  int patch_size = 1;
  int64_t in_channels = 64;
  int64_t out_channels = 0;  // 0: same as in_channels
  int64_t num_layers = 19;
  int64_t num_single_layers = 38;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = false;
  std::vector<int> axes_dims_rope = {16, 56, 56};
  double rope_theta = 10000.0;
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t out_dim() const { return out_channels ? out_channels : in_channels; }
  static Result<FluxConfig> from_json(const std::string& path);
};

// Flux's single-stream block: text and image tokens share weights; attention and an MLP run in parallel
// on the same modulated input and one projection mixes both.
// Under TP the attention heads and the MLP hidden are sharded; proj_out is row-parallel over both halves
// of its input (this rank's attention heads and MLP features), so one all-reduce ends the block.
struct FluxSingleTransformerBlock {
  AdaLayerNormZeroSingle norm;
  QKV qkv;
  Linear proj_mlp, proj_out;
  int64_t heads = 0;  // this rank's
  ParallelContext par;
  static Result<FluxSingleTransformerBlock> load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                                 int64_t heads, int64_t head_dim, const ParallelContext* par = nullptr);
  // tokens [B, L + N, dim] (text first; N this rank's image shard under SP), updated in place.
  void operator()(Tensor& tokens, const Tensor& silu_temb, const RopeTables& rope,
                  const SeqLayout* seq = nullptr) const;
};

class FluxTransformer {
 public:
  // par: this rank's TP and SP groups (nullptr: one device). Each rank loads only its TP shard.
  static Result<FluxTransformer> load(const Checkpoint& ck, const FluxConfig& cfg,
                                      const ParallelContext* par = nullptr);
  const FluxConfig& config() const { return cfg_; }
  // RoPE tables for ids [L, n_axes] (txt_ids ++ img_ids), float64 angles cast to float32 as diffusers does.
  RopeTables rope_tables(const Tensor& ids) const;
  // hidden_states [B, N, in_channels] packed latents, encoder_hidden_states [B, L, joint_attention_dim],
  // pooled_projections [B, pooled_projection_dim], timestep [B] (sigma in [0, 1]), img_ids [N, 3],
  // txt_ids [L, 3], guidance [B] (undefined for schnell) -> [B, N, out_channels]. Under SP every rank gets
  // the full inputs, works on its image shard and ends with the full output.
  Result<Tensor> forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                         const Tensor& pooled_projections, const Tensor& timestep, const Tensor& img_ids,
                         const Tensor& txt_ids, const Tensor& guidance, const Hooks* hooks = nullptr) const;

 private:
  FluxConfig cfg_;
  ParallelContext par_;
  Linear x_embedder_, context_embedder_;
  TimestepEmbedder timestep_embedder_;
  std::optional<TimestepEmbedder> guidance_embedder_;
  Mlp2 text_embedder_;
  std::vector<JointTransformerBlock> transformer_blocks_;
  std::vector<FluxSingleTransformerBlock> single_transformer_blocks_;
  AdaLayerNormContinuous norm_out_;
  Linear proj_out_;
};

// The config from tensor shapes (a checkpoint with diffusers names, e.g. from open_transformer_checkpoint):
// everything but the RoPE axes is in the shapes; those are FLUX.1's (16, 56, 56) when attention_head_dim is
// 128, else `axes_dims_rope` must be given (an error otherwise, asking for a config.json).
Result<FluxConfig> infer_flux_config(const Checkpoint& ck, const std::vector<int>* axes_dims_rope = nullptr);
// The config.json beside the checkpoint at `path_or_dir` when there is one, else inferred from `ck`.
Result<FluxConfig> flux_config_for(const std::string& path_or_dir, const Checkpoint& ck);

// Image position ids for an h x w latent packed in 2x2 patches: [(h/2)(w/2), 3] rows (0, row, col).
Tensor flux_image_ids(int64_t h, int64_t w);

}  // namespace meshdit
