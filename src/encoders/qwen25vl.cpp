// Qwen2.5-VL's language model on text as transformers' Qwen2_5_VLTextModel computes it.
#include "encoders/qwen25vl.h"

#include <numeric>

#include "backend/model_ops.h"
#include "io/json_config.h"

namespace meshdit {

Result<Qwen25VLTextConfig> Qwen25VLTextConfig::from_json(const std::string& path) {
  MD_TRY(Json root, load_json(path));
  // The full Qwen2_5_VLConfig nests the language model's fields in text_config; a bare text config has them
  // at the top.
  const Json& j = root.is_object() && root.contains("text_config") ? root["text_config"] : root;
  Qwen25VLTextConfig c;
  ConfigReader r(j, path);
  r.get("vocab_size", c.vocab_size);
  r.get("hidden_size", c.hidden_size);
  r.get("intermediate_size", c.intermediate_size);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("num_key_value_heads", c.num_key_value_heads);
  r.get("rms_norm_eps", c.rms_norm_eps);
  r.get("rope_theta", c.rope_theta);
  MD_RETURN_IF_ERROR(r.status());
  // transformers 5 keeps theta and the sections in rope_parameters; 4.x in rope_scaling (theta at the top).
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_object()) continue;
    ConfigReader rr(j[key], path + " (" + key + ")");
    rr.get("rope_theta", c.rope_theta);
    rr.get("mrope_section", c.mrope_section);
    std::string type = "default";
    rr.get("rope_type", type);
    if (type != "default" && type != "mrope") rr.fail("rope_type", "'" + type + "' is not supported");
    MD_RETURN_IF_ERROR(rr.status());
  }
  if (c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.hidden_size % c.num_attention_heads != 0 ||
      c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_attention_heads", "hidden_size, num_attention_heads and num_key_value_heads do not divide");
  else if (c.head_dim() % 2 != 0 ||
           std::accumulate(c.mrope_section.begin(), c.mrope_section.end(), int64_t(0)) != c.head_dim() / 2)
    r.fail("mrope_section", "must sum to half the head dim (" + std::to_string(c.head_dim() / 2) + ")");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<Qwen25VLTextEncoder> Qwen25VLTextEncoder::load(const Checkpoint& ck, const Qwen25VLTextConfig& cfg,
                                                      const ParallelContext* par) {
  Qwen25VLTextEncoder m;
  m.cfg_ = cfg;
  const int tp = par ? par->tp_size() : 1, r = par ? par->tp_rank() : 0;
  Communicator* reduce = par ? par->tp : nullptr;
  if (cfg.num_attention_heads < tp)
    return make_error("Qwen2.5-VL text encoder: " + std::to_string(cfg.num_attention_heads) +
                      " heads cannot be split over tp=" + std::to_string(tp));
  const int64_t D = cfg.hidden_size, Dh = cfg.head_dim(), F = cfg.intermediate_size;
  const int64_t group = cfg.num_attention_heads / cfg.num_key_value_heads;
  m.heads_ = shard_range(cfg.num_attention_heads, tp, r);
  m.kv_heads_ = {m.heads_.begin / group, (m.heads_.end - 1) / group + 1};
  const std::vector<Range> q_rows{{m.heads_.begin * Dh, m.heads_.end * Dh}};
  const std::vector<Range> kv_rows{{m.kv_heads_.begin * Dh, m.kv_heads_.end * Dh}};
  const std::vector<Range> ff_rows{shard_range(F, tp, r)};
  const int64_t Q = cfg.num_attention_heads * Dh, KV = cfg.num_key_value_heads * Dh;
  // Checkpoints saved by transformers 5 nest the language model under model.language_model; the original
  // Qwen2.5-VL ones (and Qwen-Image's text_encoder) under model.
  const std::string base = ck.has("model.language_model.embed_tokens.weight") ? "model.language_model." : "model.";
  MD_TRY(m.embed_tokens_, ck.get(base + "embed_tokens.weight", {cfg.vocab_size, D}));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = base + "layers." + std::to_string(i) + ".";
    Block b;
    MD_TRY(b.input_norm, RMSNorm::load(ck, p + "input_layernorm", D, cfg.rms_norm_eps));
    MD_TRY(b.q, Linear::load_rows(ck, p + "self_attn.q_proj", D, Q, q_rows, true));
    MD_TRY(b.k, Linear::load_rows(ck, p + "self_attn.k_proj", D, KV, kv_rows, true));
    MD_TRY(b.v, Linear::load_rows(ck, p + "self_attn.v_proj", D, KV, kv_rows, true));
    MD_TRY(b.o, Linear::load_cols(ck, p + "self_attn.o_proj", Q, D, q_rows, reduce, false));
    MD_TRY(b.post_attention_norm, RMSNorm::load(ck, p + "post_attention_layernorm", D, cfg.rms_norm_eps));
    MD_TRY(b.gate, Linear::load_rows(ck, p + "mlp.gate_proj", D, F, ff_rows, false));
    MD_TRY(b.up, Linear::load_rows(ck, p + "mlp.up_proj", D, F, ff_rows, false));
    MD_TRY(b.down, Linear::load_cols(ck, p + "mlp.down_proj", F, D, ff_rows, reduce, false));
    m.blocks_.push_back(std::move(b));
  }
  MD_TRY(m.norm_, RMSNorm::load(ck, base + "norm", D, cfg.rms_norm_eps));
  return m;
}

Tensor Qwen25VLTextEncoder::repeat_kv(const Tensor& t) const {
  const int64_t group = cfg_.num_attention_heads / cfg_.num_key_value_heads;
  if (group == 1) return t;
  const int64_t B = t.size(0), L = t.size(1), Dh = t.size(3);
  // An uneven TP split can start or end this rank's heads inside a group: each KV head is repeated for
  // just the query heads of this rank that read it.
  std::vector<Tensor> parts;
  for (int64_t kv = kv_heads_.begin; kv < kv_heads_.end; ++kv) {
    const int64_t n = std::min(heads_.end, (kv + 1) * group) - std::max(heads_.begin, kv * group);
    const int64_t j = kv - kv_heads_.begin;
    parts.push_back(t.slice(2, j, j + 1).expand({B, L, n, Dh}));
  }
  return (parts.size() == 1 ? parts[0] : concat(parts, 2)).contiguous();
}

Result<Tensor> Qwen25VLTextEncoder::forward(const Tensor& input_ids, const Tensor& attention_mask,
                                            std::vector<Tensor>* hidden_states) const {
  if (input_ids.dim() != 2)
    return make_error("Qwen2.5-VL text encoder: input_ids must be [B, L], got " + shape_str(input_ids.shape()));
  if (attention_mask.defined() && attention_mask.shape() != input_ids.shape())
    return make_error("Qwen2.5-VL text encoder: attention_mask " + shape_str(attention_mask.shape()) +
                      " must match input_ids");
  const int64_t B = input_ids.size(0), L = input_ids.size(1), H = heads_.size(), Hkv = kv_heads_.size();
  const int64_t Dh = cfg_.head_dim();
  MD_TRY(Tensor x, ops::embedding(embed_tokens_, input_ids));
  if (hidden_states) hidden_states->push_back(x.clone());

  // transformers numbers text tokens 0..L-1 whatever the mask (padding included), and so must we: the
  // padded rows are compared too.
  std::vector<float> pos(static_cast<size_t>(L));
  std::iota(pos.begin(), pos.end(), 0.0f);
  auto [cos, sin] =
      ops::rope_tables(ops::to_device(Tensor::from_f32({L, 1}, pos), x.device()), {int(Dh)}, cfg_.rope_theta);
  AttentionMask mask;
  mask.causal = true;
  // Key padding on top of causal order; a padded query still sees the valid keys before it, as in transformers.
  if (attention_mask.defined())
    mask.bias = ops::mask_to_bias(attention_mask).reshape({B, 1, 1, L}).expand({B, 1, L, L}).contiguous();
  const float scale = 1.0f / std::sqrt(float(Dh));
  for (size_t li = 0; li < blocks_.size(); ++li) {
    const Block& b = blocks_[li];
    Tensor h = b.input_norm(x);
    Tensor q = b.q(h).reshape({B, L, H, Dh});
    Tensor k = b.k(h).reshape({B, L, Hkv, Dh});
    ops::rope_half_(q, cos, sin);
    ops::rope_half_(k, cos, sin);
    Tensor a = ops::attention(q, repeat_kv(k), repeat_kv(b.v(h).reshape({B, L, Hkv, Dh})), scale, &mask);
    ops::add_(x, b.o(a.reshape({B, L, H * Dh})));
    Tensor f = b.post_attention_norm(x);
    ops::add_(x, b.down(ops::mul(b.gate(f, Act::SiLU), b.up(f))));
    if (hidden_states && li + 1 < blocks_.size()) hidden_states->push_back(x.clone());
  }
  x = norm_(x);
  if (hidden_states) hidden_states->push_back(x);
  return x;
}

}  // namespace meshdit
