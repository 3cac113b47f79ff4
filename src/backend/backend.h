// A backend is a table of kernels (ggml-style): layers call meshdit::ops, ops look up the table of the
// tensors' device and call through it. Adding a backend means filling this struct and listing it in
// compiled_backends(), not editing layers. The backend also owns its device's memory and data movement:
// its allocator and copies are registered with core when it is set up, so Tensor::empty/contiguous/to
// work on its device.
//
// Conventions every backend follows: activations are row-major with a contiguous last dimension;
// weights are [out, in] row-major in any float storage dtype (F32/BF16/F16) and are widened to float32
// for accumulation; outputs are freshly allocated contiguous tensors on the backend's device written by
// the kernel; every tensor a kernel receives is on that device.
#pragma once
#include <vector>

#include "backend/cpu/quant.h"
#include "core/allocator.h"
#include "core/tensor.h"

namespace meshdit {

enum class Act : uint8_t { None, GeluTanh, GeluErf, SiLU, QuickGelu, Relu, Tanh };
const char* act_name(Act a);

// Running state of an online-softmax attention over one query block set: the unnormalised output,
// the running row maximum and the running row sum. Ring attention merges K/V chunks into it.
struct AttentionState {
  Tensor acc;  // [B, Lq, H, D] float32
  Tensor max;  // [B, H, Lq]
  Tensor sum;  // [B, H, Lq]
};

// Geometry of a 2-D convolution: stride and zero padding on each side (top, left, bottom, right), so an
// asymmetric pad such as diffusers' Downsample2D F.pad(0, 1, 0, 1) needs no padded copy.
struct Conv2dParams {
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t out_h(int64_t h, int64_t kh) const { return (h + pad_top + pad_bottom - kh) / stride_h + 1; }
  int64_t out_w(int64_t w, int64_t kw) const { return (w + pad_left + pad_right - kw) / stride_w + 1; }
};

// What a query may not see: an additive bias broadcast over batch, heads and queries ([B or 1, H or 1, Lq or 1,
// Lk], float32, -inf where masked: T5's relative positions, key padding) and/or causal order (key j > query i).
struct AttentionMask {
  Tensor bias;
  bool causal = false;
};

struct Backend {
  const char* name;
  // y[M, N] = act(x[M, K] . w[N, K]^T + b[N]); x rows may be strided (stride(0) >= K).
  void (*linear)(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y);
  // The same with w kept block-quantized: rows U8 [N, bytes per row] of `type` blocks (GGUF layouts,
  // backend/cpu/quant.h), K = x's columns a multiple of the block size.
  void (*linear_quantized)(const Tensor& x, const Tensor& rows, QuantType type, const Tensor* bias, Act act, Tensor& y);
  void (*layer_norm)(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y);
  void (*rms_norm)(const Tensor& x, const Tensor* w, float eps, Tensor& y);
  // y[b, l, :] = x[b, l, :] * (1 + scale[b, :]) + shift[b, :]
  void (*modulate)(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y);
  // layer_norm then modulate in one pass over x [B, L, C] (contiguous; w, b optional [C]; shift, scale [B, C]
  // float32 rows of any stride, as modulate's): y = LayerNorm(x) * (1 + scale[b, :]) + shift[b, :]. Bit-identical to
  // this backend's layer_norm followed by its modulate (the normalised value is computed and rounded to float32 as
  // layer_norm stores it, then modulate's expression), so fusing changes no result.
  void (*layer_norm_modulate)(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& shift,
                              const Tensor& scale, Tensor& y);
  // x[b, l, :] += gate[b, :] * y[b, l, :]  (gate undefined means 1)
  void (*add_gated)(Tensor& x, const Tensor* gate, const Tensor& y);
  void (*activation)(Tensor& x, Act act);
  void (*softmax)(Tensor& x);  // in place over the last dim
  // q [B, Lq, H, D], k/v [B, Lk, H, D] (D contiguous): merges these keys into the state. mask may be null.
  void (*attention_accumulate)(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                               const AttentionMask* mask, AttentionState& st);
  // out = acc / sum
  void (*attention_finalize)(const AttentionState& st, Tensor& out);
  // x [B, L, H, D] in place: (x0, x1) pairs rotated by (cos, sin) [L, D] (interleaved pairs, as Flux).
  void (*rope)(Tensor& x, const Tensor& cos, const Tensor& sin);
  // y [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, kh, kw]) + b[O] (groups = 1, no dilation); x and y
  // contiguous float32, w contiguous in any float storage dtype.
  void (*conv2d)(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y);
  // x [B, C, ...] contiguous: per (batch, group of C/groups channels) statistics over the channels and all
  // spatial positions, then the optional per-channel affine (w, b [C]) and an activation fused after it.
  void (*group_norm)(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y);
  // y [B, C, 2H, 2W] = x [B, C, H, W] repeated 2x2 (F.interpolate(scale_factor=2, mode="nearest")).
  void (*upsample_nearest2x)(const Tensor& x, Tensor& y);
  // group_norm in two steps, for a tensor whose groups continue on other ranks: out [B, groups] = per
  // (batch, group) sum of x, or of (x - mean)^2 when mean [B, groups] is given; then y = group_norm's
  // affine and activation applied with the given mean and rstd [B, groups]. x, y, mean, rstd contiguous f32.
  void (*group_sums)(const Tensor& x, int64_t groups, const Tensor* mean, Tensor& out);
  void (*group_norm_apply)(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* w,
                           const Tensor* b, Act act, Tensor& y);
  // Element-wise on contiguous float32 tensors of one shape (y may alias an input).
  void (*fill)(Tensor& y, float value);
  void (*affine)(const Tensor& x, float a, float b, Tensor& y);        // y = x * a + b
  void (*lerp)(const Tensor& a, const Tensor& b, float w, Tensor& y);  // y = a + w * (b - a)
  void (*clamp)(Tensor& x, float lo, float hi);                        // in place
  void (*mul)(const Tensor& a, const Tensor& b, Tensor& y);            // y = a * b
  // y = x / d + b with a true division, each step rounded to float32: diffusers' `latents / scaling_factor
  // + shift_factor`, which x * (1 / d) + b does not reproduce bit for bit.
  void (*div_add)(const Tensor& x, float d, float b, Tensor& y);

  // ---- memory, data movement, and the small ops that were host loops in ops.cpp (issue #7: "the
  // backend owns memory"). Kept together so that other blocks of new kernels merge beside it. ----
  Device device;
  // Registered for `device` when the backend is set up, unless one is already (a caching allocator
  // installed by the application stays).
  Allocator* allocator;
  // dst = src element-wise: same shape, any strides (0 included), any dtypes (float <-> float, I64/I32 ->
  // float and back by value). Behind contiguous/clone/to/concat on this device.
  void (*copy)(const Tensor& src, Tensor& dst);
  // Contiguous bytes between host memory and this device's memory (both memcpy on the CPU).
  void (*copy_to_host)(void* host_dst, const void* src, size_t bytes);
  void (*copy_from_host)(void* dst, const void* host_src, size_t bytes);
  void (*zero)(Tensor& y);  // y contiguous, any dtype: every byte 0
  // Bytes that can be allocated on this device now (a device: the driver's free memory plus the allocator's
  // cached free blocks; the host: MemAvailable), 0 when unknown. What a model's weights are checked against
  // before any of them is copied there.
  size_t (*free_memory)();
  // out [N, D] float32 = rows ids[i] of table [V, D] (any float dtype, any strides) for ids [N] int64
  // contiguous. An id outside [0, V) is an input error: false, with the first such id in *bad_id (out
  // then unspecified).
  bool (*embedding)(const Tensor& table, const Tensor& ids, Tensor& out, int64_t* bad_id);
  // out [N, dim] float32 from t [N] float32, diffusers' get_timestep_embedding in its float32 order of
  // operations (ops::timestep_embedding); the last column is 0 when dim is odd.
  void (*timestep_embedding)(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                             float max_period, Tensor& out);
  // y = a + b: a, b float32 of y's shape with any strides (0 along broadcast dimensions), y contiguous.
  void (*add_broadcast)(const Tensor& a, const Tensor& b, Tensor& y);

  // ---- kernels for model code -------------------------------------------------------------------------
  // What layers, models, encoders and schedulers computed in host loops before: with them in the table,
  // model code never reads tensor memory, so a GPU backend needs no edits there. Inputs and outputs are
  // contiguous; float tensors are float32 unless said otherwise. meshdit::ops (backend/model_ops.h) wraps
  // them.
  //
  // cos, sin [L, sum(axes_dims)] from positions pos [L, axes_dims.size()]: axis a fills its block of columns
  // in pairs, pair i of it cos/sin(pos[l, a] * theta^(-2i / dim_a)) evaluated in float64, then rounded
  // (diffusers' get_1d_rotary_pos_embed with repeat_interleave_real, freqs_dtype float64).
  void (*rope_tables)(const Tensor& pos, const std::vector<int>& axes_dims, double theta, Tensor& cos, Tensor& sin);
  // y = sums / count, or with rstd 1 / sqrt(sums / count + eps), in float64 then rounded: GroupNorm moments
  // from sums reduced over ranks.
  void (*moments_from_sums)(const Tensor& sums, double count, double eps, bool rstd, Tensor& y);
  // diffusers' blend_v (dim 2) / blend_h (dim 3) in place on b [B, C, h, w] from a [B, C, h', w'] (the other
  // spatial extent equal): with e = min(extent, a's and b's size along dim), b's first e lines along dim
  // become a's last e lines * (1 - t) + b * t, t = line / e.
  void (*blend)(const Tensor& a, Tensor& b, int64_t extent, int dim);
  // out [1, H, Lq, Lk] = table [buckets, H] at the int64 bucket ids [Lq, Lk] (T5's relative position bias);
  // an id outside [0, buckets) aborts.
  void (*gather_bias)(const Tensor& table, const Tensor& buckets, Tensor& out);
  // y = 0 where mask > 0, else -inf: key padding as an additive attention bias.
  void (*mask_to_bias)(const Tensor& mask, Tensor& y);
  // On int64 x [R, L] -> int64 out [R]: the first position of each row's maximum (torch.argmax), or the first
  // position equal to value (`missing` when none).
  void (*argmax_rows)(const Tensor& x, Tensor& out);
  void (*find_rows)(const Tensor& x, int64_t value, int64_t missing, Tensor& out);
  // out [B, D] = x [B, L, D] at rows idx [B] (int64); an index outside [0, L) aborts.
  void (*gather_rows)(const Tensor& x, const Tensor& idx, Tensor& out);
  // out = a * x + b * y, each product rounded to float32 before the sum (y null: out = a * x): torch's
  // float32 arithmetic in the schedulers' steps, bit for bit.
  void (*axpby)(float a, const Tensor& x, float b, const Tensor* y, Tensor& out);
  // Guidance rescaling. x [R, n] contiguous f32: out [R] = per-row statistic (Bessel-corrected standard
  // deviation, or L2 norm), accumulated in double; y [R, n] = x[r, :] * num[r] / den[r].
  void (*row_std)(const Tensor& x, Tensor& out);
  void (*row_l2)(const Tensor& x, Tensor& out);
  void (*scale_rows_by_ratio)(const Tensor& x, const Tensor& num, const Tensor& den, Tensor& y);
  // x [B, L, H, D] in place, rotated in halves (transformers' rotate_half: dimension i pairs with i + D/2,
  // as Llama / Qwen) by frequency i of cos, sin [L, D] laid out as rope_tables makes them (frequency i in
  // columns 2i and 2i + 1), so one table serves both layouts.
  void (*rope_half)(Tensor& x, const Tensor& cos, const Tensor& sin);
  // out [2] = {sum |a - b|, sum |b|} over every element of a and b (one shape, contiguous f32), accumulated
  // in float64 over fixed-size chunks summed in order (the same value for any thread count): step
  // caching's relative L1 change, which every rank of a mesh must compute alike.
  void (*l1_change_sums)(const Tensor& a, const Tensor& b, Tensor& out);
};

const Backend& cpu_backend();

// Every backend compiled into this binary whose device is present, the host's first. The first call sets
// each up: its allocator and data movement registered with core (core/allocator.h, set_device_copy). The
// CUDA backend (backend/cuda/) joins the list, and every backend-parameterised test, when it is compiled in
// and the runtime reports a device.
const std::vector<const Backend*>& compiled_backends();
// The backend of device d, or null when none is compiled in.
const Backend* find_backend(Device d);
// As find_backend; a device without a backend is a programming error (check find_backend first where
// the device comes from the user).
const Backend& backend_for(Device d);

// Tests only: makes b (on device d) the backend of d in place of the compiled one, null restores it;
// returns the previous stand-in. A CPU-only build runs the CPU kernels on a stand-in device with host
// memory this way, to check that every op allocates where its inputs are.
const Backend* set_backend_for_testing(Device d, const Backend* b);

}  // namespace meshdit
