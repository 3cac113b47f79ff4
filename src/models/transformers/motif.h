#pragma once
#include <string>
#include <vector>

#include "core/hooks.h"
#include "layers/attention.h"
#include "layers/embeddings.h"
#include "layers/feed_forward.h"
#include "layers/sequence_shard.h"

namespace meshdit {

// Motif-Image's MotifImageConfig (motif_image.json). Keys the DiT never reads (attn_embed_dim, in_channel,
// out_channel, num_key_value_heads, dropout, ...) are accepted and ignored, as the reference does.
struct MotifConfig {
  int64_t num_layers = 30;
  int64_t hidden_dim = 1920;
  int patch_size = 2;
  int64_t num_attention_heads = 30;
  int64_t mlp_hidden_dim = 7680;
  int64_t time_embed_dim = 4096;
  int64_t modulation_dim = 4096;
  int64_t pooled_text_dim = 2048;
  int64_t register_token_num = 4;
  int64_t height = 1024, width = 1024;  // the image the fixed position table is built for
  int64_t vae_compression = 8;
  int64_t pos_emb_size = 64;  // the grid the position table is stretched from (0 in the json: 64 above 512 px, else 16)
  bool use_final_layer_norm = false;
  bool use_time_token_in_attn = true;  // one time token t_token_proj(emb_t) appended to the text

  // The DiT's fixed sizes (class attributes of MotifDiT, not config keys).
  static constexpr int64_t kTextDim = 4096;       // ENCODED_TEXT_DIM: T5 width; CLIP-L ++ CLIP-G is padded to it
  static constexpr int64_t kLatentChannels = 16;  // SD3_LATENT_CHANNEL

  int64_t head_dim() const { return hidden_dim / num_attention_heads; }
  int64_t grid() const { return height / vae_compression / patch_size; }  // the position table's side
  static Result<MotifConfig> from_json(const std::string& path);
  static Result<MotifConfig> from_json_text(const std::string& text, const std::string& name);
};

// One dual-stream block (MotifDiTBlock): each stream is modulated by its own six chunks (alpha .. zeta) of
// Linear(SiLU(emb_t)) and goes through an extra Linear before its q/k/v.
struct MotifBlock {
  ModulationLinear affine_x, affine_c;
  LayerNorm norm;  // no affine, eps 1e-5; the same function for norm_1_* and norm_2_*
  Linear linear_1_x, linear_1_c;
  JointAttention attn;
  FeedForward mlp_x, mlp_c;
  static Result<MotifBlock> load(const Checkpoint& ck, const std::string& prefix, const MotifConfig& c,
                                 const ParallelContext* par, int64_t padded_heads);
  // x: the image stream [B, n + registers, dim] (this rank's patches, then the replicated registers), c: the
  // text stream [B, L, dim], silu_emb = SiLU(emb_t) [B, modulation_dim]. Updates both in place and reports
  // its intermediates as "hook.<name>.*", image tokens in the reference's order (registers first).
  void operator()(Tensor& x, Tensor& c, const Tensor& silu_emb, const SeqLayout* seq, int64_t registers,
                  const Hooks* hooks, const std::string& name) const;
};

class MotifTransformer {
 public:
  // par: this rank's TP and SP groups (nullptr: one device). The heads are padded with zero heads to a multiple
  // of tp (30 heads on tp=4 or 8).
  static Result<MotifTransformer> load(const Checkpoint& ck, const MotifConfig& cfg,
                                       const ParallelContext* par = nullptr);
  const MotifConfig& config() const { return cfg_; }
  // latent [B, 16, H, W] (square), t [B] (int64 round(sigma * 1000), or float), text_emb_t5 [B, L5, 4096],
  // text_emb_clip_l [B, Lc, 768], text_emb_clip_g [B, Lc, 1280] (any widths summing to at most 4096),
  // pooled_text_embs [B, pooled_text_dim] -> velocity [B, 16, H, W].
  Result<Tensor> forward(const Tensor& latent, const Tensor& t, const Tensor& text_emb_t5,
                         const Tensor& text_emb_clip_l, const Tensor& text_emb_clip_g, const Tensor& pooled_text_embs,
                         const Hooks* hooks = nullptr) const;

 private:
  MotifConfig cfg_;
  ParallelContext par_;
  Linear text_cond_;
  PatchEmbed patching_;
  Mlp2 time_mlp_, pooled_mlp_;  // TimestepEmbedding of the sinusoid and of the pooled text
  Tensor pos_embed_;            // [grid^2, dim] for the configured size (undefined on a meta checkpoint)
  Tensor register_tokens_;      // [1, R, dim]
  std::optional<Linear> t_token_proj_;
  std::vector<MotifBlock> blocks_;
  std::optional<LayerNorm> final_norm_;
  Linear final_modulation_, final_linear_;
};

// The config from tensor shapes (names as in the released checkpoint without its "dit." prefix). The image
// size is not in the weights: height/width keep 1024 and pos_emb_size 64, the released model's.
Result<MotifConfig> infer_motif_config(const Checkpoint& ck);

}  // namespace meshdit
