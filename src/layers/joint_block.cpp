#include "layers/joint_block.h"

namespace meshdit {

Result<JointTransformerBlock> JointTransformerBlock::load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                                          int64_t heads, int64_t head_dim, bool qk_norm,
                                                          bool context_pre_only, JointAttention::Order order,
                                                          const ParallelContext* par, int64_t padded_heads) {
  const float eps = 1e-6f;
  JointTransformerBlock b;
  b.order = order;
  MD_TRY(b.norm1, AdaLayerNormZero::load(ck, prefix + ".norm1", dim, eps, par));
  if (context_pre_only) {
    MD_TRY(b.norm1_context_pre, AdaLayerNormContinuous::load(ck, prefix + ".norm1_context", dim, dim, eps, par));
  } else {
    MD_TRY(b.norm1_context, AdaLayerNormZero::load(ck, prefix + ".norm1_context", dim, eps, par));
    MD_TRY(b.ff_context, FeedForward::load(ck, prefix + ".ff_context", dim, 4 * dim, dim, Act::GeluTanh, par));
  }
  MD_TRY(b.attn, JointAttention::load(ck, prefix + ".attn", dim, heads, head_dim, qk_norm, context_pre_only, eps, par,
                                      padded_heads));
  b.norm2 = LayerNorm::plain(eps);
  b.norm2_context = LayerNorm::plain(eps);
  MD_TRY(b.ff, FeedForward::load(ck, prefix + ".ff", dim, 4 * dim, dim, Act::GeluTanh, par));
  return b;
}

void JointTransformerBlock::operator()(Tensor& hidden, Tensor& context, const Tensor& silu_temb,
                                       const RopeTables* rope, const SeqLayout* seq) const {
  AdaLayerNormZero::Out x = norm1(hidden, silu_temb);
  AdaLayerNormZero::Out c;
  if (context_pre_only()) c.x = (*norm1_context_pre)(context, silu_temb);
  else c = (*norm1_context)(context, silu_temb);

  auto [attn_img, attn_txt] = attn(x.x, c.x, order, rope, seq);

  ops::add_gated_(hidden, x.gate_msa, attn_img);
  Tensor ff_in = norm2.modulated(hidden, x.shift_mlp, x.scale_mlp);
  ops::add_gated_(hidden, x.gate_mlp, ff(ff_in));

  if (context_pre_only()) {
    context = Tensor();
    return;
  }
  ops::add_gated_(context, c.gate_msa, attn_txt);
  Tensor ffc_in = norm2_context.modulated(context, c.shift_mlp, c.scale_mlp);
  ops::add_gated_(context, c.gate_mlp, (*ff_context)(ffc_in));
}

}  // namespace meshdit
