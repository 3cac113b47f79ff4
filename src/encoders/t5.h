#pragma once
#include <vector>

#include "layers/norms.h"
#include "parallel/mesh.h"

namespace meshdit {

// transformers T5Config / UMT5Config (encoder fields); defaults are T5 v1.1 XXL's.
struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 4096;
  int64_t d_kv = 64;
  int64_t d_ff = 10240;
  int64_t num_layers = 24;
  int64_t num_heads = 64;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  float layer_norm_epsilon = 1e-6f;
  std::string feed_forward_proj = "gated-gelu";
  // T5 computes the position bias in layer 0 and shares it; UMT5 has one table per layer.
  bool bias_per_layer = false;
  // For messages and mesh traits.
  const char* name() const { return bias_per_layer ? "UMT5 encoder" : "T5 encoder"; }
  static Result<T5Config> from_json(const std::string& path);
};

// The T5 encoder (Raffel et al. 2020; v1.1 gated-GELU): RMS-normalised pre-norm blocks, unscaled attention
// with learned relative-position bucket biases, gated feed-forward. T5-XXL is 4.7 B parameters (UMT5-XXL
// 5.7 B), so it shards like the transformers: under TP a rank holds its heads (q/k/v rows, o columns and
// its columns of the position-bias tables) and its slice of the feed-forward (wi rows, wo columns); two
// all-reduces per block. Heads may split unevenly (T5 v1.1 has 64, UMT5 64; tiny fixtures 3).
class T5Encoder {
 public:
  static Result<T5Encoder> load(const Checkpoint& ck, const T5Config& cfg, const ParallelContext* par = nullptr);
  const T5Config& config() const { return cfg_; }
  // input_ids [B, L] int64; attention_mask [B, L] (1 = attend) or undefined. hidden_states, when given,
  // receives the embeddings, each block's output, and last the final normalised output.
  Result<Tensor> forward(const Tensor& input_ids, const Tensor& attention_mask,
                         std::vector<Tensor>* hidden_states = nullptr) const;

 private:
  struct Block {
    RMSNorm attn_norm, ff_norm;
    Linear q, k, v, o;
    Tensor relative_attention_bias;  // [buckets, heads], layer 0 only for T5
    Linear wi_0, wi_1, wo;           // wi_1 absent for non-gated FFNs
  };
  Tensor position_bias(const Tensor& table, int64_t L) const;  // -> [1, H, L, L]
  T5Config cfg_;
  Range heads_;  // this rank's heads
  Tensor shared_;
  std::vector<Block> blocks_;
  RMSNorm final_layer_norm_;
  bool gated_ = true;
  Act act_ = Act::GeluTanh;
};

// WanPipeline._get_t5_prompt_embeds after the encoder: row b of last_hidden_state [B, L, D] cut to its first
// seq_lens[b] positions (attention_mask.gt(0).sum(1), the tokenizer's lengths) and zero-padded again to
// max_sequence_length -> [B, max_sequence_length, D]. The encoder's outputs at padding positions are not zero
// (they attend to the valid tokens), which is why the pipeline replaces them.
Result<Tensor> trim_prompt_embeds(const Tensor& last_hidden_state, const std::vector<int64_t>& seq_lens,
                                  int64_t max_sequence_length);

// transformers' _relative_position_bucket for a bidirectional encoder (float32 log as transformers).
int64_t t5_relative_position_bucket(int64_t relative_position, int64_t num_buckets, int64_t max_distance);

}  // namespace meshdit
