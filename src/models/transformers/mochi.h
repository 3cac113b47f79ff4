// Genmo's Mochi-1 text-to-video transformer (diffusers MochiTransformer3DModel): an asymmetric MM-DiT whose
// text stream is narrower than the visual one.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/attention.h"
#include "layers/embeddings.h"
#include "layers/feed_forward.h"
#include "layers/sequence_shard.h"

namespace meshdit {

// diffusers MochiTransformer3DModel config; defaults are genmo/mochi-1-preview's (= diffusers' defaults).
struct MochiConfig {
  int64_t patch_size = 2, num_attention_heads = 24, attention_head_dim = 128, num_layers = 48;
  int64_t pooled_projection_dim = 1536, in_channels = 12, out_channels = 12, text_embed_dim = 4096;
  int64_t time_embed_dim = 256, max_sequence_length = 256;
  std::string qk_norm = "rms_norm", activation_fn = "swiglu";
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // MochiTransformerBlock's SwiGLU widths: 2/3 of 4x, as Mochi's paper sizes them.
  int64_t ff_inner_dim() const { return (4 * inner_dim() * 2) / 3; }
  int64_t ff_context_inner_dim() const { return (4 * pooled_projection_dim * 2) / 3; }
  static Result<MochiConfig> from_json(const std::string& path);
};

// MochiAttentionPool: one query (the mean of the valid text tokens) attends over [mean, text] with 8 heads;
// the result, projected to the visual width, joins the timestep embedding. Small: replicated under TP.
struct MochiAttentionPool {
  static constexpr int64_t kHeads = 8;
  Linear to_kv, to_q, to_out;
  static Result<MochiAttentionPool> load(const Checkpoint& ck, const std::string& prefix, int64_t embed_dim,
                                         int64_t out_dim);
  // x [B, L, embed_dim] T5 embeddings, key_bias [B, L] (0 valid, -inf padding) -> [B, out_dim].
  Tensor operator()(const Tensor& x, const Tensor& key_bias) const;
};

// MochiTransformerBlock: MochiRMSNormZero modulation (scale and tanh gate, no shift) of both streams, one joint
// attention over [visual, valid text] with the visual RoPE, SwiGLU feed-forwards; the residual adds pass
// through a plain RMSNorm scaled by the tanh gate. The last block (context_pre_only) only reads the text:
// it modulates it with MochiLayerNormContinuous (scale only) and has no text output path.
struct MochiBlock {
  ModulationLinear norm1;          // SiLU(temb) -> scale_msa, gate_msa, scale_mlp, gate_mlp  (4 x dim)
  ModulationLinear norm1_context;  // the same 4 x pooled_projection_dim; 1 x (scale) when context_pre_only
  bool context_pre_only = false;
  JointAttention attn1;
  RMSNorm norm;  // every norm of the block: no affine, eps 1e-6
  FeedForward ff;
  std::optional<FeedForward> ff_context;
  static Result<MochiBlock> load(const Checkpoint& ck, const std::string& prefix, const MochiConfig& c,
                                 bool context_pre_only, const ParallelContext* par);
  // x [B, n, dim] (this rank's visual tokens), context [B, L, pooled_projection_dim], silu_temb [B, dim];
  // txt_bias [B, L] hides the padded text keys, txt_keep [B, L, local heads x head_dim] zeroes their rows of
  // the attention output. Both streams update in place (context stays as it is after the last block).
  void operator()(Tensor& x, Tensor& context, const Tensor& silu_temb, const RopeTables& rope, const SeqLayout* seq,
                  const Tensor& txt_bias, const Tensor& txt_keep) const;
};

class MochiTransformer {
 public:
  static Result<MochiTransformer> load(const Checkpoint& ck, const MochiConfig& cfg,
                                       const ParallelContext* par = nullptr);
  // hidden_states [B, in_channels, F, H, W] latent video, encoder_hidden_states [B, L, text_embed_dim] (T5),
  // timestep [B] ((1 - sigma) 1000 as MochiPipeline passes it), encoder_attention_mask [B, L] (1 valid,
  // 0 padding; every sample needs a valid token) -> [B, out_channels, F, H, W]. On a mesh every rank passes
  // the whole inputs and gets the whole output.
  Result<Tensor> forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states, const Tensor& timestep,
                         const Tensor& encoder_attention_mask, const Hooks* hooks = nullptr) const;
  const MochiConfig& config() const { return cfg_; }

 private:
  MochiConfig cfg_;
  ParallelContext par_;
  PatchEmbed patch_embed_;  // per frame: a stride-2 Conv2d, no position table
  TimestepEmbedder timestep_embedder_;
  MochiAttentionPool pooler_;
  Linear caption_proj_;
  Tensor pos_frequencies_;  // [3, heads, head_dim / 2]: learned RoPE frequencies per axis (t, y, x) and head
  std::vector<MochiBlock> blocks_;
  AdaLayerNormContinuous norm_out_;
  Linear proj_out_;
};

// MochiRoPE: cos/sin [tokens.size() + n_txt, heads.size() x head_dim] for visual tokens `tokens` of the
// frames x h x w patch grid (token order frame, row, column) followed by n_txt text rows that do not rotate
// (cos 1, sin 0), each row the interleaved pairs of heads `heads` in order. Positions: the frame index, and
// row / column centres scaled to a 192 x 192 grid's area; angles position . pos_frequencies in float32.
RopeTables mochi_rope(const Tensor& pos_frequencies, int64_t h, int64_t w, Range tokens, Range heads, int64_t n_txt,
                      Device dev);

}  // namespace meshdit
