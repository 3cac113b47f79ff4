// Multi-head attention layers. Tokens stay [B, L, H*D]; heads are a view [B, L, H, D], so no transposes.
#pragma once
#include <optional>
#include <utility>

#include "layers/norms.h"
#include "layers/parallel_attention.h"

namespace meshdit {

// cos/sin tables [L, head_dim] for the whole (joint) sequence, in the order tokens are concatenated; or
// [L, heads * head_dim] when every head rotates by its own angles (Mochi's learned frequencies), the columns
// of this rank's heads in head order.
struct RopeTables {
  Tensor cos, sin;
};

// Rotary embedding of x [B, L, H, D] (contiguous) in place, interleaved pairs, with tables shared by the heads
// ([L, D]) or per head ([L, H D]).
void apply_rope_(Tensor& x, const RopeTables& rope);

// Q, K, V projections of one token stream with optional per-head RMS norm of q and k.
struct QKV {
  Linear q, k, v;
  std::optional<RMSNorm> norm_q, norm_k;
  // names: (to_q, to_k, to_v, norm_q, norm_k) or (add_q_proj, ..., norm_added_q, norm_added_k).
  // Under TP a rank projects only its heads (head_shard: column-parallel rows of q, k, v).
  // padded_heads > heads: the heads are split as if there were padded_heads, the ones past `heads` having
  // zero q/k/v rows and biases (a zero head: zero scores, uniform weights over zero values, zero output).
  static Result<QKV> load(const Checkpoint& ck, const std::string& prefix, const char* const names[5], int64_t dim,
                          int64_t heads, int64_t head_dim, bool qk_norm, float eps,
                          const ParallelContext* par = nullptr, int64_t padded_heads = 0, bool has_bias = true);
  // -> q, k, v as [B, L, H, D]
  struct Heads {
    Tensor q, k, v;
  };
  Heads operator()(const Tensor& x, int64_t heads) const;
};

// The heads rank `par->tp_rank()` computes (all of them without TP).
Range head_shard(int64_t heads, const ParallelContext* par);
// `heads` rounded up to a multiple of the TP degree: the head count a model that pads its heads shards.
int64_t padded_head_count(int64_t heads, int tp);

// Joint attention of two token streams (MM-DiT): each stream projects its own q/k/v, attention runs over
// the concatenated sequence, and each stream projects its slice of the result back.
struct JointAttention {
  enum class Order { ImageFirst, TextFirst };  // SD3 concatenates [image, text]; Flux [text, image]
  // The weights' names under the attention's prefix: diffusers' (the default) or a model's own (Motif's q_proj,
  // q_norm_x, o_proj, ...), whether its projections have biases, and the per-head scale some models learn for
  // the text queries (Motif's q_scale: multiplies them after their norm; nullptr: none).
  struct Names {
    const char* img[5] = {".to_q", ".to_k", ".to_v", ".norm_q", ".norm_k"};
    const char* txt[5] = {".add_q_proj", ".add_k_proj", ".add_v_proj", ".norm_added_q", ".norm_added_k"};
    const char* to_out = ".to_out.0";
    const char* to_add_out = ".to_add_out";
    bool bias = true;
    const char* txt_q_scale = nullptr;
  };
  int64_t heads = 0, head_dim = 0;  // heads: this rank's (heads / tp)
  ParallelContext par;
  QKV img, txt;
  Linear to_out;
  std::optional<Linear> to_add_out;  // absent in a context_pre_only block
  Tensor txt_q_scale;                // [1, 1, heads, 1] for this rank's heads (0 on padded ones), or undefined
  // Under TP: q/k/v column-parallel by heads, to_out / to_add_out row-parallel (one all-reduce each).
  // padded_heads > heads (see QKV::load): the padded heads' columns of to_out / to_add_out are zero too, so
  // they add nothing to the output; this lets tp not divide the model's heads while every rank has as many.
  static Result<JointAttention> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t heads,
                                     int64_t head_dim, bool qk_norm, bool context_pre_only, float eps = 1e-6f,
                                     const ParallelContext* par = nullptr, int64_t padded_heads = 0);
  // An asymmetric joint attention (Mochi's MochiAttention): the text stream has its own width, projected into
  // the same heads (add_*_proj from txt_dim, to_add_out back to txt_dim), optionally without q/k/v biases.
  struct Spec {
    int64_t dim = 0, txt_dim = 0, heads = 0, head_dim = 0;
    bool qk_norm = true, context_pre_only = false, qkv_bias = true;
    float eps = 1e-6f;
    int64_t padded_heads = 0;
    Names names;  // bias false there also drops the output projections' biases
  };
  static Result<JointAttention> load(const Checkpoint& ck, const std::string& prefix, const Spec& s,
                                     const ParallelContext* par = nullptr);
  static Result<JointAttention> load(const Checkpoint& ck, const std::string& prefix, const Names& names, int64_t dim,
                                     int64_t heads, int64_t head_dim, bool qk_norm, bool context_pre_only, float eps,
                                     const ParallelContext* par, int64_t padded_heads);
  // -> (image output, text output); the text output is undefined when context_pre_only. img_x is this rank's
  // image shard under SP (seq says how the sequence is split; nullptr: not split); rope covers the local
  // joint sequence. txt_bias: the text key mask as joint_attention takes it (nullptr: every key visible).
  // txt_keep [B, L_txt, heads * head_dim] (optional): multiplies the text rows of the attention output before
  // to_add_out, 0 on padded text rows (Mochi drops them from the attention, so they come out zero).
  std::pair<Tensor, Tensor> operator()(const Tensor& img_x, const Tensor& txt_x, Order order,
                                       const RopeTables* rope = nullptr, const SeqLayout* seq = nullptr,
                                       const Tensor* txt_bias = nullptr, const Tensor* txt_keep = nullptr) const;
};

// [B, L, H, D] -> [B, L, H*D]
Tensor merge_heads(const Tensor& x);

}  // namespace meshdit
