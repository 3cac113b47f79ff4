// The sequence-parallel split of a DiT's joint sequence: each SP rank keeps a contiguous shard of the image
// (or video) tokens, in rank order, and every text token. A transformer builds one per forward after its
// embedders, takes its local tokens (and RoPE rows) from it, hands layout() to joint attention and gathers
// its output with it; without SP (no group, or a group of one) every call passes its input through.
#pragma once
#include "layers/attention.h"

namespace meshdit {

class SequenceShard {
 public:
  // n_img image tokens, n_txt text tokens; txt_first: the joint sequence is [text, image] (Flux), else
  // [image, text] (SD3).
  SequenceShard(int64_t n_img, int64_t n_txt, bool txt_first, const ParallelContext& par);

  bool split() const { return sp_ != nullptr; }
  Range range() const { return mine_; }  // this rank's image tokens
  int64_t local_tokens() const { return mine_.size(); }
  // For joint_attention and the blocks that call it: nullptr when not split, as they take it.
  const SeqLayout* layout() const { return split() ? &seq_ : nullptr; }

  // This rank's image tokens of x [B, N, ...], contiguous.
  Tensor local(const Tensor& x) const;
  // Per-token tables of the joint sequence [n_txt + N, ...] in its order -> the rows of the local joint
  // sequence: the text's and this shard's, in the same order.
  Tensor local_rows(const Tensor& joint) const;
  RopeTables local(const RopeTables& rope) const { return {local_rows(rope.cos), local_rows(rope.sin)}; }
  // Every rank's image tokens x [B, local_tokens, ...] -> [B, N, ...] on every rank. Collective over SP.
  Tensor gather(const Tensor& x) const;

 private:
  int64_t n_img_;
  SeqLayout seq_;
  Range mine_;
  Communicator* sp_ = nullptr;  // set only when split
};

}  // namespace meshdit
