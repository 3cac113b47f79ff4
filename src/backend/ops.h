// The operations layers are written in. Each allocates its output and dispatches to the backend of its
// input's device; none knows which model calls it.
#pragma once
#include "backend/backend.h"
#include "core/tensor.h"

namespace meshdit::ops {

// x [..., K] . w[N, K]^T + b -> [..., N], optionally followed by an activation.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor* bias = nullptr, Act act = Act::None);
Tensor layer_norm(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps);
Tensor rms_norm(const Tensor& x, const Tensor* weight, float eps);
// AdaLN modulation: x [B, L, C] * (1 + scale [B, C]) + shift [B, C].
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);
// Gated residual in place: x [B, L, C] += gate [B, C] * y.
void add_gated_(Tensor& x, const Tensor& gate, const Tensor& y);
void add_(Tensor& x, const Tensor& y);
Tensor add(const Tensor& a, const Tensor& b);
Tensor activation(const Tensor& x, Act act);
void softmax_(Tensor& x);

// Scaled dot-product attention, no mask: q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].
// Tiled with online softmax: the Lq x Lk score matrix never exists.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale);
AttentionState attention_begin(const Tensor& q);
void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, AttentionState& st);
Tensor attention_end(const AttentionState& st);

// Rotary embedding on interleaved pairs, in place: x [B, L, H, D], cos/sin [L, D].
void rope_(Tensor& x, const Tensor& cos, const Tensor& sin);

// Sinusoidal timestep embedding exactly as diffusers' get_timestep_embedding (float32 arithmetic).
Tensor timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift,
                          float scale = 1.0f, float max_period = 10000.0f);

// NCHW image -> [B, (H/p)(W/p), C*p*p] patches, channel-major inside a patch (matches a conv weight
// [O, C, p, p] flattened), and the inverse for [B, (H/p)(W/p), p*p*C] with channel-minor patches
// (diffusers' "nhwpqc" unpatchify).
Tensor patchify(const Tensor& x, int p);
Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int p, int64_t channels);

}  // namespace meshdit::ops
