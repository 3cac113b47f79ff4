// Wan 2.1 / 2.2 text-to-video transformer (diffusers WanTransformer3DModel): one expert of Wan2.2-T2V-A14B
// (both experts share this architecture; the pipeline switches between two loaded instances).
#pragma once
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/attention.h"
#include "layers/feed_forward.h"
#include "layers/sequence_shard.h"

namespace meshdit {

// diffusers WanTransformer3DModel config (text-to-video: no image embedder, no added K/V); defaults are
// Wan2.2-T2V-A14B's experts.
struct WanConfig {
  int64_t num_layers = 40, num_attention_heads = 40, attention_head_dim = 128, ffn_dim = 13824;
  int64_t text_dim = 4096, freq_dim = 256, in_channels = 16, out_channels = 16;
  std::vector<int> patch_size = {1, 2, 2};
  bool cross_attn_norm = true;
  std::string qk_norm = "rms_norm_across_heads";
  float eps = 1e-6f;
  int64_t rope_max_seq_len = 1024;  // RoPE table rows per axis: latent frames / rows / columns after patching
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t patch_volume() const { return int64_t(patch_size[0]) * patch_size[1] * patch_size[2]; }
  // WanRotaryPosEmbed's split of head_dim into (frames, rows, columns) columns.
  std::vector<int> rope_axes() const;
  static Result<WanConfig> from_json(const std::string& path);
};

// Wan's attention (WanAttention with WanAttnProcessor): q/k/v projections, RMSNorm of q and k over all heads'
// channels, then self-attention over the video tokens with 3-D RoPE, or cross-attention to the text. Under TP
// a rank projects its heads (q/k/v column-parallel, to_out row-parallel) and the q/k norms sum squares over
// the TP group; under SP the self-attention runs ring or Ulysses over the video shards, while the
// cross-attention's local queries see the whole (replicated) text.
struct WanAttention {
  int64_t heads = 0, head_dim = 0;  // heads: this rank's
  ParallelContext par;
  Linear to_q, to_k, to_v, to_out;
  RMSNormAcrossHeads norm_q, norm_k;
  static Result<WanAttention> load(const Checkpoint& ck, const std::string& prefix, const WanConfig& c,
                                   const ParallelContext* par);
  // x [B, n, dim] (this rank's video tokens), rope rows for them, seq: the SP split (nullptr: none).
  Tensor self_attention(const Tensor& x, const RopeTables& rope, const SeqLayout* seq) const;
  // x [B, n, dim] queries, context [B, L, dim] keys and values (no mask: the text's padding is zero embeddings).
  Tensor cross_attention(const Tensor& x, const Tensor& context) const;
};

// WanTransformerBlock: modulated self-attention, cross-attention to the text (after norm2), modulated
// feed-forward; the modulation is the model's timestep projection plus the block's scale_shift_table.
struct WanBlock {
  LayerNorm norm1, norm2, norm3;  // norm2 affine when cross_attn_norm
  bool cross_attn_norm = true;
  WanAttention attn1, attn2;
  FeedForward ffn;
  Tensor scale_shift_table;  // [1, 6, dim]
  static Result<WanBlock> load(const Checkpoint& ck, const std::string& prefix, const WanConfig& c,
                               const ParallelContext* par);
  // x [B, n, dim] in place; context [B, L, dim]; timestep_proj [B, 6, dim].
  void operator()(Tensor& x, const Tensor& context, const Tensor& timestep_proj, const RopeTables& rope,
                  const SeqLayout* seq) const;
};

class WanTransformer {
 public:
  static Result<WanTransformer> load(const Checkpoint& ck, const WanConfig& cfg, const ParallelContext* par = nullptr);
  // hidden_states [B, in_channels, F, H, W] latent video, timestep [B] (int64 or float, in [0, 1000)),
  // encoder_hidden_states [B, L, text_dim] (UMT5, zero past each prompt's length) -> [B, out_channels, F, H, W].
  // On a mesh every rank passes the whole inputs and gets the whole output.
  Result<Tensor> forward(const Tensor& hidden_states, const Tensor& timestep, const Tensor& encoder_hidden_states,
                         const Hooks* hooks = nullptr) const;
  const WanConfig& config() const { return cfg_; }

 private:
  WanConfig cfg_;
  ParallelContext par_;
  Linear patch_embedding_;  // the Conv3d's weight viewed as [dim, C pt ph pw] (kernel = stride)
  Mlp2 time_embedder_, text_embedder_;
  Linear time_proj_;
  std::vector<WanBlock> blocks_;
  LayerNorm norm_out_;
  Linear proj_out_;
  Tensor scale_shift_table_;  // [1, 2, dim]
};

// WanRotaryPosEmbed: cos/sin [tokens, head_dim] for tokens [begin, end) of the patched grid in token order
// (frame, row, column; end < 0: every token), each axis owning its columns of head_dim (rope_axes), angles in
// float64 then float32 as the reference's buffers; made on `dev`.
RopeTables wan_rope(const WanConfig& c, int64_t frames, int64_t h, int64_t w, Range tokens = {0, -1},
                    Device dev = Device::CPU);

// The Conv3d patch embedding's input: [B, C, F, H, W] -> [B, (F/pt)(H/ph)(W/pw), C pt ph pw], channel-major
// inside a patch as the conv weight flattens; and proj_out's output [B, f h w, pt ph pw C] back to
// [B, C, f pt, h ph, w pw] (the reference's reshape and permute).
Tensor wan_patchify(const Tensor& x, const std::vector<int>& patch);
Tensor wan_unpatchify(const Tensor& x, int64_t f, int64_t h, int64_t w, const std::vector<int>& patch);

}  // namespace meshdit
