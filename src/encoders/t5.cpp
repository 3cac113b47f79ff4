// T5 / UMT5 encoder as transformers' T5EncoderModel / UMT5EncoderModel compute it.
#include "encoders/t5.h"

#include <algorithm>
#include <cmath>

#include "backend/model_ops.h"
#include "io/json_config.h"

namespace meshdit {

Result<T5Config> T5Config::from_json(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  T5Config c;
  ConfigReader r(j, path);
  r.get("vocab_size", c.vocab_size);
  r.get("d_model", c.d_model);
  r.get("d_kv", c.d_kv);
  r.get("d_ff", c.d_ff);
  r.get("num_layers", c.num_layers);
  r.get("num_heads", c.num_heads);
  r.get("relative_attention_num_buckets", c.relative_attention_num_buckets);
  r.get("relative_attention_max_distance", c.relative_attention_max_distance);
  r.get("layer_norm_epsilon", c.layer_norm_epsilon);
  r.get("feed_forward_proj", c.feed_forward_proj);
  std::string model_type;
  r.get("model_type", model_type);
  c.bias_per_layer = model_type == "umt5";
  if (c.feed_forward_proj != "gated-gelu" && c.feed_forward_proj != "relu" && c.feed_forward_proj != "gated-relu")
    r.fail("feed_forward_proj", "'" + c.feed_forward_proj + "' is not supported");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<Tensor> trim_prompt_embeds(const Tensor& last_hidden_state, const std::vector<int64_t>& seq_lens,
                                  int64_t max_sequence_length) {
  const std::string who = "trim_prompt_embeds: ";
  if (last_hidden_state.dim() != 3)
    return make_error(who + "last_hidden_state must be [B, L, D], got " + shape_str(last_hidden_state.shape()));
  const int64_t B = last_hidden_state.size(0), L = last_hidden_state.size(1), D = last_hidden_state.size(2);
  if (int64_t(seq_lens.size()) != B)
    return make_error(who + std::to_string(seq_lens.size()) + " sequence lengths for a batch of " + std::to_string(B));
  if (max_sequence_length < 1)
    return make_error(who + "max_sequence_length must be positive, got " + std::to_string(max_sequence_length));
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = seq_lens[size_t(b)];
    if (n < 0 || n > L || n > max_sequence_length)
      return make_error(who + "row " + std::to_string(b) + " has length " + std::to_string(n) + ", outside [0, " +
                        std::to_string(std::min(L, max_sequence_length)) + "]");
    std::vector<Tensor> parts;
    if (n > 0) parts.push_back(last_hidden_state.slice(0, b, b + 1).slice(1, 0, n));
    if (n < max_sequence_length)
      parts.push_back(
          Tensor::zeros({1, max_sequence_length - n, D}, last_hidden_state.dtype(), last_hidden_state.device()));
    rows.push_back(parts.size() == 1 ? parts[0].contiguous() : concat(parts, 1));
  }
  return B == 1 ? rows[0] : concat(rows, 0);
}

int64_t t5_relative_position_bucket(int64_t relative_position, int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  num_buckets /= 2;
  if (relative_position > 0) bucket += num_buckets;
  const int64_t n = relative_position < 0 ? -relative_position : relative_position;
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  const float scaled = std::log(float(n) / float(max_exact)) /
                       float(std::log(double(max_distance) / double(max_exact))) * float(num_buckets - max_exact);
  int64_t large = max_exact + int64_t(scaled);
  if (large > num_buckets - 1) large = num_buckets - 1;
  return bucket + large;
}

Result<T5Encoder> T5Encoder::load(const Checkpoint& ck, const T5Config& cfg, const ParallelContext* par) {
  T5Encoder m;
  m.cfg_ = cfg;
  const int tp = par ? par->tp_size() : 1, r = par ? par->tp_rank() : 0;
  Communicator* reduce = par ? par->tp : nullptr;
  if (cfg.num_heads < tp)
    return make_error(std::string(cfg.name()) + ": " + std::to_string(cfg.num_heads) +
                      " heads cannot be split over tp=" + std::to_string(tp));
  m.heads_ = shard_range(cfg.num_heads, tp, r);
  const std::vector<Range> head_rows{{m.heads_.begin * cfg.d_kv, m.heads_.end * cfg.d_kv}};
  const std::vector<Range> ff_rows{shard_range(cfg.d_ff, tp, r)};
  m.gated_ = cfg.feed_forward_proj.rfind("gated-", 0) == 0;
  m.act_ = cfg.feed_forward_proj.find("gelu") != std::string::npos ? Act::GeluTanh : Act::Relu;
  const int64_t D = cfg.d_model, I = cfg.num_heads * cfg.d_kv, F = cfg.d_ff;
  // The encoder-only checkpoints store the embedding as shared.weight; full ones also under encoder.
  const std::string emb = ck.has("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
  MD_TRY(m.shared_, ck.get(emb, {cfg.vocab_size, D}));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    Block b;
    MD_TRY(b.attn_norm, RMSNorm::load(ck, p + "0.layer_norm", D, cfg.layer_norm_epsilon));
    MD_TRY(b.q, Linear::load_rows(ck, p + "0.SelfAttention.q", D, I, head_rows, false));
    MD_TRY(b.k, Linear::load_rows(ck, p + "0.SelfAttention.k", D, I, head_rows, false));
    MD_TRY(b.v, Linear::load_rows(ck, p + "0.SelfAttention.v", D, I, head_rows, false));
    MD_TRY(b.o, Linear::load_cols(ck, p + "0.SelfAttention.o", I, D, head_rows, reduce, false));
    if (i == 0 || cfg.bias_per_layer) {
      MD_TRY(Tensor table, ck.get(p + "0.SelfAttention.relative_attention_bias.weight",
                                  {cfg.relative_attention_num_buckets, cfg.num_heads}));
      b.relative_attention_bias = table.slice(1, m.heads_.begin, m.heads_.end);
    }
    MD_TRY(b.ff_norm, RMSNorm::load(ck, p + "1.layer_norm", D, cfg.layer_norm_epsilon));
    if (m.gated_) {
      MD_TRY(b.wi_0, Linear::load_rows(ck, p + "1.DenseReluDense.wi_0", D, F, ff_rows, false));
      MD_TRY(b.wi_1, Linear::load_rows(ck, p + "1.DenseReluDense.wi_1", D, F, ff_rows, false));
    } else {
      MD_TRY(b.wi_0, Linear::load_rows(ck, p + "1.DenseReluDense.wi", D, F, ff_rows, false));
    }
    MD_TRY(b.wo, Linear::load_cols(ck, p + "1.DenseReluDense.wo", F, D, ff_rows, reduce, false));
    m.blocks_.push_back(std::move(b));
  }
  MD_TRY(m.final_layer_norm_, RMSNorm::load(ck, "encoder.final_layer_norm", D, cfg.layer_norm_epsilon));
  return m;
}

Tensor T5Encoder::position_bias(const Tensor& table, int64_t L) const {
  // The buckets depend only on the positions: host arithmetic, uploaded once, then gathered on the device.
  std::vector<int64_t> buckets(size_t(L * L));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j)
      buckets[size_t(i * L + j)] =
          t5_relative_position_bucket(j - i, cfg_.relative_attention_num_buckets, cfg_.relative_attention_max_distance);
  return ops::gather_bias(table, ops::to_device(Tensor::from_i64({L, L}, buckets), table.device()));  // table: [buckets, this rank's heads]
}

Result<Tensor> T5Encoder::forward(const Tensor& input_ids, const Tensor& attention_mask,
                                  std::vector<Tensor>* hidden_states) const {
  if (input_ids.dim() != 2)
    return make_error(std::string(cfg_.name()) + ": input_ids must be [B, L], got " + shape_str(input_ids.shape()));
  const int64_t B = input_ids.size(0), L = input_ids.size(1), H = heads_.size(), Dk = cfg_.d_kv;
  if (attention_mask.defined() && attention_mask.shape() != input_ids.shape())
    return make_error(std::string(cfg_.name()) + ": attention_mask " + shape_str(attention_mask.shape()) +
                      " must match input_ids");
  MD_TRY(Tensor x, ops::embedding(shared_, input_ids));
  if (hidden_states) hidden_states->push_back(x.clone());

  // Key padding enters as a large negative bias (transformers adds finfo.min), on top of the position bias.
  Tensor key_bias;
  if (attention_mask.defined()) {
    key_bias = ops::mask_to_bias(attention_mask).reshape({B, 1, 1, L});
  }
  AttentionMask mask;
  for (size_t li = 0; li < blocks_.size(); ++li) {
    const Block& b = blocks_[li];
    if (b.relative_attention_bias.defined()) {
      mask.bias = position_bias(b.relative_attention_bias, L);
      if (key_bias.defined()) mask.bias = ops::add_broadcast(mask.bias, key_bias);
    }
    Tensor h = b.attn_norm(x);
    auto heads = [&](const Tensor& t) { return t.reshape({B, L, H, Dk}); };
    Tensor a = ops::attention(heads(b.q(h)), heads(b.k(h)), heads(b.v(h)), 1.0f, &mask);
    ops::add_(x, b.o(a.reshape({B, L, H * Dk})));
    Tensor f = b.ff_norm(x);
    Tensor inner = b.wi_0(f, act_);
    if (gated_) inner = ops::mul(inner, b.wi_1(f));
    ops::add_(x, b.wo(inner));
    if (hidden_states && li + 1 < blocks_.size()) hidden_states->push_back(x.clone());
  }
  x = final_layer_norm_(x);
  if (hidden_states) hidden_states->push_back(x);
  return x;
}

}  // namespace meshdit
