#pragma once
#include <vector>

#include "layers/norms.h"
#include "parallel/mesh.h"

namespace meshdit {

// transformers Qwen2_5_VLTextConfig: the text_config of a Qwen2_5_VLConfig (or a bare text config);
// defaults are Qwen2.5-VL-7B-Instruct's, Qwen-Image's text encoder.
struct Qwen25VLTextConfig {
  int64_t vocab_size = 152064;
  int64_t hidden_size = 3584;
  int64_t intermediate_size = 18944;
  int64_t num_hidden_layers = 28;
  int64_t num_attention_heads = 28;
  int64_t num_key_value_heads = 4;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 1000000.0;
  std::vector<int> mrope_section{16, 24, 24};
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  static Result<Qwen25VLTextConfig> from_json(const std::string& path);
};

// The language model of Qwen2.5-VL (Qwen2_5_VLTextModel) on text alone, as a text encoder: pre-norm
// decoder blocks with causal GQA attention (q/k/v bias), multimodal RoPE and a SwiGLU MLP. For text the
// three mrope position streams (time, height, width) coincide, so whichever stream each mrope_section
// takes its frequencies from, the rotation is ordinary rotate_half RoPE over the whole head.
// Under TP a rank holds its query heads (q rows, o columns), the KV heads those map to (shared KV heads
// are loaded on every rank that needs them: 7B has 4 KV heads for 28 query heads) and its slice of the
// MLP (gate/up rows, down columns); two all-reduces per block. Heads may split unevenly.
class Qwen25VLTextEncoder {
 public:
  static Result<Qwen25VLTextEncoder> load(const Checkpoint& ck, const Qwen25VLTextConfig& cfg,
                                          const ParallelContext* par = nullptr);
  const Qwen25VLTextConfig& config() const { return cfg_; }
  // input_ids [B, L] int64; attention_mask [B, L] (1 = attend) or undefined. Returns the final normalised
  // hidden states; hidden_states, when given, receives the embeddings, each block's output but the last,
  // and the final normalised output (transformers' output_hidden_states).
  Result<Tensor> forward(const Tensor& input_ids, const Tensor& attention_mask,
                         std::vector<Tensor>* hidden_states = nullptr) const;

 private:
  struct Block {
    RMSNorm input_norm, post_attention_norm;
    Linear q, k, v, o;
    Linear gate, up, down;
  };
  Tensor repeat_kv(const Tensor& t) const;  // [B, L, local KV heads, Dh] -> [B, L, local heads, Dh]
  Qwen25VLTextConfig cfg_;
  Range heads_, kv_heads_;  // this rank's query heads and the KV heads they read
  Tensor embed_tokens_;
  std::vector<Block> blocks_;
  RMSNorm norm_;
};

}  // namespace meshdit
