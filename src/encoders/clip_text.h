#pragma once
#include <vector>

#include "core/hooks.h"
#include "layers/norms.h"

namespace meshdit {

// transformers CLIPTextConfig (the fields a text encoder needs); defaults are CLIP-L's.
struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t projection_dim = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  float layer_norm_eps = 1e-5f;
  int64_t eos_token_id = 2;  // 2 selects the legacy pooling at argmax(input_ids)
  static Result<CLIPTextConfig> from_json(const std::string& path);
};

struct CLIPTextOutput {
  Tensor last_hidden_state;          // [B, L, hidden] after the final LayerNorm
  Tensor pooler_output;              // [B, hidden] at the end-of-text token
  Tensor text_embeds;                // [B, projection_dim] (only with a text_projection)
  std::vector<Tensor> hidden_states;  // embeddings, then each layer's output (before the final LayerNorm)
};

// CLIP's text tower (Radford et al. 2021): token + position embeddings, pre-LN transformer layers with
// causal self-attention, final LayerNorm, pooled at the end-of-text token, optional projection.
class CLIPTextModel {
 public:
  static Result<CLIPTextModel> load(const Checkpoint& ck, const CLIPTextConfig& cfg);
  const CLIPTextConfig& config() const { return cfg_; }
  bool has_projection() const { return text_projection_.weight.defined(); }
  // input_ids [B, L] int64. `layers` limits how many layers run (-1: all), for users of a penultimate layer.
  Result<CLIPTextOutput> forward(const Tensor& input_ids) const;

 private:
  struct Layer {
    LayerNorm layer_norm1, layer_norm2;
    Linear q_proj, k_proj, v_proj, out_proj, fc1, fc2;
  };
  CLIPTextConfig cfg_;
  Tensor token_embedding_, position_embedding_;
  std::vector<Layer> layers_;
  LayerNorm final_layer_norm_;
  Linear text_projection_;
  Act act_ = Act::QuickGelu;
};

}  // namespace meshdit
