// Attention over a sequence split across the sequence-parallel (SP) group.
//
// The sequence of a DiT block is joint: text tokens (replicated on every SP rank) and image/video tokens
// (this rank's shard, in order of rank). Two strategies give every rank's queries the whole sequence:
//  - ring (Liu et al., Ring Attention): K/V blocks of the image shards travel around the ring; each block is
//    folded into the online-softmax state (max, sum, accumulator) of the local queries while the next one is
//    in flight. Memory per rank stays 1/sp; P-1 sends of one shard's K/V per attention.
//  - Ulysses (DeepSpeed-Ulysses): one all-to-all turns "all heads, my tokens" into "my heads, all tokens",
//    local attention runs on full sequences, and a second all-to-all turns it back. Needs heads % sp == 0.
// Text queries attend to the whole sequence too, identically on every rank, so their output stays replicated.
#pragma once
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "parallel/mesh.h"

namespace meshdit {

struct SeqLayout {
  int64_t n_txt = 0;               // replicated tokens (text)
  bool txt_first = true;           // Flux: [text, image]; SD3: [image, text]
  std::vector<int64_t> img_sizes;  // image tokens on each SP rank (shard_sizes of the full count)
};

// q, k, v [B, L_local, H, D] in the local joint order -> [B, L_local, H, D]. par == nullptr or sp of size 1:
// plain attention. txt_bias (optional): [B, n_txt] float32, 0 for a text key that may be seen and -inf for
// padding (Qwen-Image's text mask); image keys are never masked, so the bias of any mix of text and image
// keys is known on every rank.
Tensor joint_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                       const ParallelContext* par, const Tensor* txt_bias = nullptr);

Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                      Communicator& sp, const Tensor* txt_bias = nullptr);
Tensor ulysses_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                         Communicator& sp, const Tensor* txt_bias = nullptr);

// The key mask [B, 1, 1, n_txt + n_img] of a joint sequence whose text keys carry txt_bias [B, n_txt] and whose
// n_img image keys are all visible.
AttentionMask joint_key_mask(const Tensor& txt_bias, int64_t n_img, bool txt_first);

}  // namespace meshdit
