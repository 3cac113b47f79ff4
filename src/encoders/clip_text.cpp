// CLIP text encoder as transformers' CLIPTextModel / CLIPTextModelWithProjection compute it.
#include "encoders/clip_text.h"

#include <cmath>

#include "backend/model_ops.h"
#include "io/json_config.h"

namespace meshdit {

Result<CLIPTextConfig> CLIPTextConfig::from_json(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  // CLIPTextModelWithProjection configs are flat; full CLIPModel configs nest a "text_config".
  const Json& t = j.contains("text_config") && j["text_config"].is_object() ? j["text_config"] : j;
  CLIPTextConfig c;
  ConfigReader r(t, path);
  r.get("vocab_size", c.vocab_size);
  r.get("hidden_size", c.hidden_size);
  r.get("intermediate_size", c.intermediate_size);
  r.get("projection_dim", c.projection_dim);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("max_position_embeddings", c.max_position_embeddings);
  r.get("hidden_act", c.hidden_act);
  r.get("layer_norm_eps", c.layer_norm_eps);
  r.get("eos_token_id", c.eos_token_id);
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
    r.fail("hidden_act", "'" + c.hidden_act + "' is not supported (quick_gelu or gelu)");
  if (c.num_attention_heads < 1 || c.hidden_size % c.num_attention_heads)
    r.fail("num_attention_heads", "must divide hidden_size");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<CLIPTextModel> CLIPTextModel::load(const Checkpoint& ck, const CLIPTextConfig& cfg) {
  CLIPTextModel m;
  m.cfg_ = cfg;
  m.act_ = cfg.hidden_act == "gelu" ? Act::GeluErf : Act::QuickGelu;
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size;
  // transformers saves CLIPTextModel without the "text_model." prefix and the projection model with it.
  const std::string p = ck.has("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  MD_TRY(m.token_embedding_, ck.get(p + "embeddings.token_embedding.weight", {cfg.vocab_size, D}));
  MD_TRY(m.position_embedding_, ck.get(p + "embeddings.position_embedding.weight", {cfg.max_position_embeddings, D}));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string lp = p + "encoder.layers." + std::to_string(i) + ".";
    Layer l;
    MD_TRY(l.layer_norm1, LayerNorm::load(ck, lp + "layer_norm1", D, cfg.layer_norm_eps, true));
    MD_TRY(l.layer_norm2, LayerNorm::load(ck, lp + "layer_norm2", D, cfg.layer_norm_eps, true));
    MD_TRY(l.q_proj, Linear::load(ck, lp + "self_attn.q_proj", D, D));
    MD_TRY(l.k_proj, Linear::load(ck, lp + "self_attn.k_proj", D, D));
    MD_TRY(l.v_proj, Linear::load(ck, lp + "self_attn.v_proj", D, D));
    MD_TRY(l.out_proj, Linear::load(ck, lp + "self_attn.out_proj", D, D));
    MD_TRY(l.fc1, Linear::load(ck, lp + "mlp.fc1", D, F));
    MD_TRY(l.fc2, Linear::load(ck, lp + "mlp.fc2", F, D));
    m.layers_.push_back(std::move(l));
  }
  MD_TRY(m.final_layer_norm_, LayerNorm::load(ck, p + "final_layer_norm", D, cfg.layer_norm_eps, true));
  if (ck.has("text_projection.weight")) {
    MD_TRY(m.text_projection_, Linear::load(ck, "text_projection", D, cfg.projection_dim, /*has_bias=*/false));
  }
  return m;
}

Result<CLIPTextOutput> CLIPTextModel::forward(const Tensor& input_ids) const {
  if (input_ids.dim() != 2 || input_ids.size(1) > cfg_.max_position_embeddings)
    return make_error("CLIP text encoder: input_ids " + shape_str(input_ids.shape()) + " must be [B, L<=" +
                      std::to_string(cfg_.max_position_embeddings) + "]");
  const int64_t B = input_ids.size(0), L = input_ids.size(1), D = cfg_.hidden_size;
  const int64_t H = cfg_.num_attention_heads;
  MD_TRY(Tensor x, ops::embedding(token_embedding_, input_ids));
  const Tensor pos = position_embedding_.slice(0, 0, L).to(DType::F32).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b);
    ops::add_(xb, pos);
  }
  CLIPTextOutput out;
  out.hidden_states.push_back(x.clone());

  AttentionMask causal;
  causal.causal = true;
  const float scale = 1.0f / std::sqrt(float(D / H));
  for (const Layer& l : layers_) {
    Tensor h = l.layer_norm1(x);
    auto heads = [&](const Tensor& t) { return t.reshape({B, L, H, D / H}); };
    Tensor a = ops::attention(heads(l.q_proj(h)), heads(l.k_proj(h)), heads(l.v_proj(h)), scale, &causal);
    ops::add_(x, l.out_proj(a.reshape({B, L, D})));
    ops::add_(x, l.fc2(l.fc1(l.layer_norm2(x), act_)));
    out.hidden_states.push_back(x.clone());
  }
  out.last_hidden_state = final_layer_norm_(x);

  // Pooling: the legacy configs (eos_token_id == 2) take argmax(input_ids), which is the first
  // end-of-text token because it has the largest id; newer configs take the first eos_token_id.
  const Tensor at =
      cfg_.eos_token_id == 2 ? ops::argmax_rows(input_ids) : ops::find_rows(input_ids, cfg_.eos_token_id, L - 1);
  out.pooler_output = ops::gather_rows(out.last_hidden_state, at);
  if (has_projection()) out.text_embeds = text_projection_(out.pooler_output);
  return out;
}

}  // namespace meshdit
