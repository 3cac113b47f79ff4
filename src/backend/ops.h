// The operations layers are written in. Each allocates its output on its inputs' device (all inputs of
// one call on one device) and dispatches to that device's backend; none knows which model calls it.
#pragma once
#include <initializer_list>
#include "backend/backend.h"
#include "core/tensor.h"

namespace meshdit::ops {

// t on device dev: t itself (the same view, no copy) when it is there already, else a contiguous copy in
// t's dtype. How activations and inputs move between the host and a device, and results come back.
Tensor to_device(const Tensor& t, Device dev);
// The one explicit step that puts a loaded weight on a device, between loading and the first kernel. On
// the CPU it is the weight itself: the memory-mapped view stays, no copy; on a device, a copy in the
// checkpoint's dtype.
Tensor place(const Tensor& weight, Device dev);
// The device of op's tensor inputs (null or undefined ones skipped); inputs on two devices abort with the
// op's name (a caller's bug: weights reach a device through place(), activations through to_device()).
Device common_device(const char* op, std::initializer_list<const Tensor*> inputs);

// x [..., K] . w[N, K]^T + b -> [..., N], optionally followed by an activation.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor* bias = nullptr, Act act = Act::None);
// The same with a weight kept block-quantized (io/checkpoint.h QuantizedWeight: rows [N, bytes per row], K columns).
Tensor linear_quantized(const Tensor& x, const Tensor& rows, QuantType type, int64_t K, const Tensor* bias = nullptr,
                        Act act = Act::None);
Tensor layer_norm(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps);
Tensor rms_norm(const Tensor& x, const Tensor* weight, float eps);
// AdaLN modulation: x [B, L, C] * (1 + scale [B, C]) + shift [B, C].
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);
// modulate(layer_norm(x, weight, bias, eps), shift, scale) in one pass over x, bit for bit the same (the
// fused kernel rounds the normalised value as the intermediate tensor would hold it).
Tensor layer_norm_modulate(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps, const Tensor& shift,
                           const Tensor& scale);
// Gated residual in place: x [B, L, C] += gate [B, C] * y.
void add_gated_(Tensor& x, const Tensor& gate, const Tensor& y);
void add_(Tensor& x, const Tensor& y);
Tensor add(const Tensor& a, const Tensor& b);
Tensor activation(const Tensor& x, Act act);
void softmax_(Tensor& x);
// Element-wise product of same-shape tensors.
Tensor mul(const Tensor& a, const Tensor& b);
// A float32 tensor of `shape` filled with `value`, on device `dev`.
Tensor full(const Shape& shape, float value, Device dev = Device::CPU);
// x * a + b, element-wise (latent scaling, [-1, 1] -> [0, 1]).
Tensor affine(const Tensor& x, float a, float b);
// x / d + b, element-wise, with a true division: the VAE input `latents / scaling_factor + shift_factor` as
// diffusers rounds it (affine(x, 1 / d, b) can differ in the last bit).
Tensor div_add(const Tensor& x, float d, float b);
// a + w * (b - a) in that order of operations (diffusers' CFG: neg + scale * (pos - neg)); same shapes.
Tensor lerp(const Tensor& a, const Tensor& b, float w);
// Clamps x into [lo, hi] in place.
void clamp_(Tensor& x, float lo, float hi);
// a + b with size-1 dimensions of either broadcast (same rank).
Tensor add_broadcast(const Tensor& a, const Tensor& b);
// Rows of an embedding table [V, D] (any float dtype) for int64 ids of any shape -> [..., D] float32; an
// id outside [0, V) is an input error.
Result<Tensor> embedding(const Tensor& table, const Tensor& ids);

// Scaled dot-product attention, no mask: q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].
// Tiled with online softmax: the Lq x Lk score matrix never exists.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask = nullptr);
AttentionState attention_begin(const Tensor& q);
void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, AttentionState& st,
                          const AttentionMask* mask = nullptr);
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

// 2-D convolution (groups = 1): x [B, C, H, W] (converted to contiguous float32 if it is not),
// w [O, C, kh, kw] in F32/BF16/F16, bias [O] or null -> [B, O, Ho, Wo] with the stride and zero padding
// of p (Ho = (H + pad_top + pad_bottom - kh) / stride_h + 1, likewise Wo).
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p = {});
// torch.nn.GroupNorm on x [B, C, ...]: statistics per batch element over C/groups channels and every
// position, then the per-channel affine (weight/bias [C], each optional) and the activation act.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor* weight, const Tensor* bias, float eps,
                  Act act = Act::None);
// group_norm split in two for a tensor spread over ranks (rows of an image), whose statistics must be
// reduced across them between the steps. group_sums -> [B, groups] float32: per batch element and group,
// the sum of x, or with mean [B, groups] the sum of squared deviations (x - mean)^2 (the second pass of a
// two-pass variance). group_norm_apply: group_norm's affine and activation with the given mean and
// rstd = 1 / sqrt(var + eps), both [B, groups]; with the whole tensor's statistics it equals group_norm.
Tensor group_sums(const Tensor& x, int64_t groups, const Tensor* mean = nullptr);
Tensor group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* weight,
                        const Tensor* bias, Act act = Act::None);
// F.interpolate(x, scale_factor=2, mode="nearest") on x [B, C, H, W] -> [B, C, 2H, 2W].
Tensor upsample_nearest2x(const Tensor& x);

}  // namespace meshdit::ops
