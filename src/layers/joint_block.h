// The MM-DiT block (SD3's JointTransformerBlock, Flux's double-stream FluxTransformerBlock): image and
// text tokens keep separate weights, meet in one joint attention, and each is modulated by the timestep
// embedding through its own AdaLayerNormZero.
#pragma once
#include "layers/attention.h"
#include "layers/feed_forward.h"

namespace meshdit {

struct JointTransformerBlock {
  AdaLayerNormZero norm1;
  std::optional<AdaLayerNormZero> norm1_context;               // full block
  std::optional<AdaLayerNormContinuous> norm1_context_pre;     // context_pre_only block (SD3's last)
  JointAttention attn;
  LayerNorm norm2, norm2_context;
  FeedForward ff;
  std::optional<FeedForward> ff_context;
  JointAttention::Order order = JointAttention::Order::ImageFirst;

  bool context_pre_only() const { return norm1_context_pre.has_value(); }

  static Result<JointTransformerBlock> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t heads,
                                            int64_t head_dim, bool qk_norm, bool context_pre_only,
                                            JointAttention::Order order, const ParallelContext* par = nullptr,
                                            int64_t padded_heads = 0);  // see JointAttention::load
  // hidden [B, N, dim] (this rank's shard under SP, as `seq` says), context [B, L, dim], silu_temb =
  // SiLU(temb) [B, dim]. Updates both in place (context becomes undefined after a context_pre_only block).
  void operator()(Tensor& hidden, Tensor& context, const Tensor& silu_temb, const RopeTables* rope = nullptr,
                  const SeqLayout* seq = nullptr) const;
};

}  // namespace meshdit
