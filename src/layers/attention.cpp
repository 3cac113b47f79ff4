#include "layers/attention.h"

#include <cmath>

namespace meshdit {

Tensor merge_heads(const Tensor& x) { return x.contiguous().reshape({x.size(0), x.size(1), x.size(2) * x.size(3)}); }

Range head_shard(int64_t heads, const ParallelContext* par) {
  return par ? shard_range(heads, par->tp_size(), par->tp_rank()) : Range{0, heads};
}

int64_t padded_head_count(int64_t heads, int tp) { return tp > 1 ? (heads + tp - 1) / tp * tp : heads; }

Result<QKV> QKV::load(const Checkpoint& ck, const std::string& prefix, const char* const names[5], int64_t dim,
                      int64_t heads, int64_t head_dim, bool qk_norm, float eps, const ParallelContext* par,
                      int64_t padded_heads, bool has_bias) {
  QKV p;
  const int64_t inner = heads * head_dim;
  const bool pad = padded_heads > heads;
  const Range h = head_shard(pad ? padded_heads : heads, par);
  const std::vector<Range> rows{{h.begin * head_dim, h.end * head_dim}};
  const int64_t padded = pad ? padded_heads * head_dim : 0;  // 0: no padding, ranges stay within the weight
  MD_TRY(p.q, Linear::load_rows(ck, prefix + names[0], dim, inner, rows, has_bias, padded));
  MD_TRY(p.k, Linear::load_rows(ck, prefix + names[1], dim, inner, rows, has_bias, padded));
  MD_TRY(p.v, Linear::load_rows(ck, prefix + names[2], dim, inner, rows, has_bias, padded));
  if (qk_norm) {
    MD_TRY(p.norm_q, RMSNorm::load(ck, prefix + names[3], head_dim, eps));
    MD_TRY(p.norm_k, RMSNorm::load(ck, prefix + names[4], head_dim, eps));
  }
  return p;
}

QKV::Heads QKV::operator()(const Tensor& x, int64_t heads) const {
  auto split = [&](const Tensor& t) { return t.reshape({t.size(0), t.size(1), heads, t.size(2) / heads}); };
  Heads h{split(q(x)), split(k(x)), split(v(x))};
  if (norm_q) h.q = (*norm_q)(h.q);
  if (norm_k) h.k = (*norm_k)(h.k);
  return h;
}

Result<JointAttention> JointAttention::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t heads,
                                            int64_t head_dim, bool qk_norm, bool context_pre_only, float eps,
                                            const ParallelContext* par, int64_t padded_heads) {
  Spec s;
  s.dim = s.txt_dim = dim;
  s.heads = heads;
  s.head_dim = head_dim;
  s.qk_norm = qk_norm;
  s.context_pre_only = context_pre_only;
  s.eps = eps;
  s.padded_heads = padded_heads;
  return load(ck, prefix, s, par);
}

Result<JointAttention> JointAttention::load(const Checkpoint& ck, const std::string& prefix, const Names& names,
                                            int64_t dim, int64_t heads, int64_t head_dim, bool qk_norm,
                                            bool context_pre_only, float eps, const ParallelContext* par,
                                            int64_t padded_heads) {
  Spec s;
  s.dim = s.txt_dim = dim;
  s.heads = heads;
  s.head_dim = head_dim;
  s.qk_norm = qk_norm;
  s.context_pre_only = context_pre_only;
  s.eps = eps;
  s.padded_heads = padded_heads;
  s.names = names;
  s.qkv_bias = names.bias;
  return load(ck, prefix, s, par);
}

Result<JointAttention> JointAttention::load(const Checkpoint& ck, const std::string& prefix, const Spec& s,
                                            const ParallelContext* par) {
  const Names& names = s.names;
  JointAttention a;
  const int64_t heads = s.heads, head_dim = s.head_dim;
  const bool pad = s.padded_heads > heads;
  const Range h = head_shard(pad ? s.padded_heads : heads, par);
  a.heads = h.size();
  a.head_dim = head_dim;
  if (par) a.par = *par;
  MD_TRY(a.img,
         QKV::load(ck, prefix, names.img, s.dim, heads, head_dim, s.qk_norm, s.eps, par, s.padded_heads, s.qkv_bias));
  MD_TRY(a.txt, QKV::load(ck, prefix, names.txt, s.txt_dim, heads, head_dim, s.qk_norm, s.eps, par, s.padded_heads,
                          s.qkv_bias));
  const std::vector<Range> cols{{h.begin * head_dim, h.end * head_dim}};
  const int64_t padded = pad ? s.padded_heads * head_dim : 0;
  MD_TRY(a.to_out,
         Linear::load_cols(ck, prefix + names.to_out, heads * head_dim, s.dim, cols, a.par.tp, names.bias, padded));
  if (!s.context_pre_only) {
    MD_TRY(a.to_add_out, Linear::load_cols(ck, prefix + names.to_add_out, heads * head_dim, s.txt_dim, cols, a.par.tp,
                                           names.bias, padded));
  }
  if (names.txt_q_scale) {
    MD_TRY(Tensor qs, ck.get_sharded(prefix + names.txt_q_scale, {heads}, Shard::Rows, {{h.begin, h.end}},
                                     pad ? s.padded_heads : 0));
    a.txt_q_scale = qs.reshape({1, 1, h.size(), 1});
  }
  return a;
}

void apply_rope_(Tensor& x, const RopeTables& rope) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  if (rope.cos.dim() == 2 && rope.cos.size(1) == D) return ops::rope_(x, rope.cos, rope.sin);
  // Per-head tables: every (token, head) pair is a row of its own, so the shared-table kernel applies to x
  // viewed as [B, L H, 1, D] with tables [L H, D].
  MD_CHECK(rope.cos.dim() == 2 && rope.cos.size(0) == L && rope.cos.size(1) == H * D && rope.cos.is_contiguous() &&
               rope.sin.is_contiguous(),
           "apply_rope_: x " + shape_str(x.shape()) + " tables " + shape_str(rope.cos.shape()));
  Tensor rows = x.reshape({B, L * H, 1, D});
  ops::rope_(rows, rope.cos.reshape({L * H, D}), rope.sin.reshape({L * H, D}));
}

std::pair<Tensor, Tensor> JointAttention::operator()(const Tensor& img_x, const Tensor& txt_x, Order order,
                                                     const RopeTables* rope, const SeqLayout* seq,
                                                     const Tensor* txt_bias, const Tensor* txt_keep) const {
  QKV::Heads i = img(img_x, heads), t = txt(txt_x, heads);
  if (txt_q_scale.defined()) t.q = ops::mul(t.q, txt_q_scale.expand(t.q.shape()));
  const bool img_first = order == Order::ImageFirst;
  auto cat = [&](const Tensor& a, const Tensor& b) { return img_first ? concat({a, b}, 1) : concat({b, a}, 1); };
  Tensor q = cat(i.q, t.q), k = cat(i.k, t.k), v = cat(i.v, t.v);
  if (rope) {
    apply_rope_(q, *rope);
    apply_rope_(k, *rope);
  }
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const int64_t Li = img_x.size(1), Lt = txt_x.size(1);
  const SeqLayout whole{Lt, !img_first, {Li}};
  Tensor o = merge_heads(joint_attention(q, k, v, scale, seq ? *seq : whole, seq ? &par : nullptr, txt_bias));
  Tensor o_img = img_first ? o.slice(1, 0, Li) : o.slice(1, Lt, Lt + Li);
  Tensor o_txt = img_first ? o.slice(1, Li, Li + Lt) : o.slice(1, 0, Lt);
  if (!to_add_out) return {to_out(o_img), Tensor()};
  if (txt_keep) o_txt = ops::mul(o_txt, *txt_keep);
  return {to_out(o_img), (*to_add_out)(o_txt)};
}

}  // namespace meshdit
