#pragma once
#include <array>
#include <vector>

#include "core/hooks.h"
#include "layers/attention.h"
#include "layers/embeddings.h"
#include "layers/feed_forward.h"

namespace meshdit {

// diffusers QwenImageTransformer2DModel config; defaults are diffusers' __init__ defaults.
struct QwenImageConfig {
  int patch_size = 2;
  int64_t in_channels = 64;
  int64_t out_channels = 16;
  int64_t num_layers = 60;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 3584;
  std::vector<int> axes_dims_rope{16, 56, 56};
  // The call's img_shapes (frame, height, width of the packed latent grid), which the forward's tensors do not
  // carry (15 tokens may be 3 x 5 or 5 x 3); {0, 0, 0}: a square grid of one frame.
  std::array<int64_t, 3> img_shape{0, 0, 0};
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  static Result<QwenImageConfig> from_json(const std::string& path);
};

// One dual-stream block: image and text keep their own modulation, norms, projections and MLPs and meet in
// one joint attention over [text, image].
struct QwenImageBlock {
  AdaLayerNormZero img_mod, txt_mod;  // SiLU -> Linear(dim, 6 dim) -> (shift, scale, gate) x 2, LayerNorm inside
  JointAttention attn;
  LayerNorm img_norm2, txt_norm2;
  FeedForward img_mlp, txt_mlp;
  static Result<QwenImageBlock> load(const Checkpoint& ck, const std::string& prefix, const QwenImageConfig& c,
                                     const ParallelContext* par);
  void operator()(Tensor& img, Tensor& txt, const Tensor& silu_temb, const RopeTables& rope, const SeqLayout* seq,
                  const Tensor* txt_bias) const;
};

class QwenImageTransformer {
 public:
  static Result<QwenImageTransformer> load(const Checkpoint& ck, const QwenImageConfig& cfg,
                                           const ParallelContext* par = nullptr);
  // hidden_states [B, N, in_channels] packed latents, encoder_hidden_states [B, L, joint_attention_dim],
  // encoder_hidden_states_mask [B, L] (1 valid, 0 padding; undefined: all valid), timestep [B] in [0, 1]
  // -> [B, N, p p out_channels]. img_shape (frames, rows, columns of the packed grid) overrides the config's
  // when set: a pipeline knows it per call.
  Result<Tensor> forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                         const Tensor& encoder_hidden_states_mask, const Tensor& timestep,
                         const Hooks* hooks = nullptr, std::array<int64_t, 3> img_shape = {0, 0, 0}) const;
  const QwenImageConfig& config() const { return cfg_; }

 private:
  QwenImageConfig cfg_;
  ParallelContext par_;
  TimestepEmbedder time_text_embed_;
  RMSNorm txt_norm_;
  Linear img_in_, txt_in_;
  std::vector<QwenImageBlock> transformer_blocks_;
  AdaLayerNormContinuous norm_out_;
  Linear proj_out_;
};

// QwenEmbedRope with scale_rope: cos/sin [L + f h w, head_dim] for the text tokens then the image grid, angles
// and their cos/sin in float32 as the reference builds its complex tables.
RopeTables qwenimage_rope(const std::vector<int>& axes_dims, int64_t frames, int64_t h, int64_t w, int64_t L);

}  // namespace meshdit
