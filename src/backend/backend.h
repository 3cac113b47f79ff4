// A backend is a table of kernels (ggml-style): layers call meshdit::ops, ops look up the table of the
// tensors' device and call through it. Adding a backend means filling this struct, not editing layers.
//
// Conventions every backend follows: activations are row-major with a contiguous last dimension;
// weights are [out, in] row-major in any float storage dtype (F32/BF16/F16) and are widened to float32
// for accumulation; outputs are freshly allocated contiguous tensors written by the kernel.
#pragma once
#include "core/tensor.h"

namespace meshdit {

enum class Act : uint8_t { None, GeluTanh, GeluErf, SiLU, QuickGelu };
const char* act_name(Act a);

// Running state of an online-softmax attention over one query block set: the unnormalised output,
// the running row maximum and the running row sum. Ring attention merges K/V chunks into it.
struct AttentionState {
  Tensor acc;  // [B, Lq, H, D] float32
  Tensor max;  // [B, H, Lq]
  Tensor sum;  // [B, H, Lq]
};

struct Backend {
  const char* name;
  // y[M, N] = act(x[M, K] . w[N, K]^T + b[N]); x rows may be strided (stride(0) >= K).
  void (*linear)(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y);
  void (*layer_norm)(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y);
  void (*rms_norm)(const Tensor& x, const Tensor* w, float eps, Tensor& y);
  // y[b, l, :] = x[b, l, :] * (1 + scale[b, :]) + shift[b, :]
  void (*modulate)(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y);
  // x[b, l, :] += gate[b, :] * y[b, l, :]  (gate undefined means 1)
  void (*add_gated)(Tensor& x, const Tensor* gate, const Tensor& y);
  void (*activation)(Tensor& x, Act act);
  void (*softmax)(Tensor& x);  // in place over the last dim
  // q [B, Lq, H, D], k/v [B, Lk, H, D] (D contiguous): merges these keys into the state.
  void (*attention_accumulate)(const Tensor& q, const Tensor& k, const Tensor& v, float scale, AttentionState& st);
  // out = acc / sum
  void (*attention_finalize)(const AttentionState& st, Tensor& out);
  // x [B, L, H, D] in place: (x0, x1) pairs rotated by (cos, sin) [L, D] (interleaved pairs, as Flux).
  void (*rope)(Tensor& x, const Tensor& cos, const Tensor& sin);
};

const Backend& cpu_backend();
const Backend& backend_for(Device d);

}  // namespace meshdit
