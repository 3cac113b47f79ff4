#include "backend/ops.h"

#include <cmath>

namespace meshdit {

const char* act_name(Act a) {
  switch (a) {
    case Act::None: return "none";
    case Act::GeluTanh: return "gelu_tanh";
    case Act::GeluErf: return "gelu";
    case Act::SiLU: return "silu";
    case Act::QuickGelu: return "quick_gelu";
  }
  return "?";
}

const Backend& backend_for(Device d) {
  MD_CHECK(d == Device::CPU, "no backend compiled for this device");
  return cpu_backend();
}

}  // namespace meshdit

namespace meshdit::ops {
namespace {

// Views [.., C] as a 2-D [rows, C] tensor with the last dimension contiguous.
Tensor as_rows(const Tensor& x) {
  Tensor c = x.stride(-1) == 1 && x.is_contiguous() ? x : x.contiguous();
  return c.reshape({c.numel() / c.size(-1), c.size(-1)});
}

Shape with_last(const Shape& s, int64_t last) {
  Shape r = s;
  r.back() = last;
  return r;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act) {
  MD_CHECK(w.dim() == 2 && x.size(-1) == w.size(1),
           "linear: input " + shape_str(x.shape()) + " vs weight " + shape_str(w.shape()));
  Tensor x2 = as_rows(x.dtype() == DType::F32 ? x : x.to(DType::F32));
  Tensor y = Tensor::empty({x2.size(0), w.size(0)});
  backend_for(x.device()).linear(x2, w.is_contiguous() ? w : w.contiguous(), bias, act, y);
  return y.reshape(with_last(x.shape(), w.size(0)));
}

Tensor layer_norm(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps) {
  Tensor x2 = as_rows(x);
  Tensor y = Tensor::empty(x2.shape());
  backend_for(x.device()).layer_norm(x2, weight, bias, eps, y);
  return y.reshape(x.shape());
}

Tensor rms_norm(const Tensor& x, const Tensor* weight, float eps) {
  Tensor x2 = as_rows(x);
  Tensor y = Tensor::empty(x2.shape());
  backend_for(x.device()).rms_norm(x2, weight, eps, y);
  return y.reshape(x.shape());
}

Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  MD_CHECK(x.dim() == 3 && shift.dim() == 2 && scale.dim() == 2 && shift.size(1) == x.size(2) &&
               scale.size(1) == x.size(2) && shift.size(0) == x.size(0),
           "modulate: x " + shape_str(x.shape()) + " shift " + shape_str(shift.shape()));
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape());
  backend_for(x.device()).modulate(xc, shift, scale, y);
  return y;
}

void add_gated_(Tensor& x, const Tensor& gate, const Tensor& y) {
  MD_CHECK(x.is_contiguous() && x.shape() == y.shape(), "add_gated_: shapes " + shape_str(x.shape()) + " vs " +
                                                             shape_str(y.shape()));
  Tensor yc = y.contiguous();
  backend_for(x.device()).add_gated(x, gate.defined() ? &gate : nullptr, yc);
}

void add_(Tensor& x, const Tensor& y) { add_gated_(x, Tensor(), y); }

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor r = a.clone();
  add_(r, b);
  return r;
}

Tensor activation(const Tensor& x, Act act) {
  Tensor y = x.clone();
  backend_for(x.device()).activation(y, act);
  return y;
}

void softmax_(Tensor& x) {
  MD_CHECK(x.is_contiguous(), "softmax_: needs a contiguous tensor");
  Tensor r = x.reshape({x.numel() / x.size(-1), x.size(-1)});
  backend_for(x.device()).softmax(r);
}

AttentionState attention_begin(const Tensor& q) {
  MD_CHECK(q.dim() == 4, "attention: q must be [B, L, H, D], got " + shape_str(q.shape()));
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  AttentionState st;
  st.acc = Tensor::zeros(q.shape());
  st.max = Tensor::empty({B, H, L});
  st.sum = Tensor::zeros({B, H, L});
  float* m = st.max.f32();
  for (int64_t i = 0; i < st.max.numel(); ++i) m[i] = -INFINITY;
  return st;
}

void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, AttentionState& st) {
  MD_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape() && q.size(0) == k.size(0) &&
               q.size(2) == k.size(2) && q.size(3) == k.size(3),
           "attention: q " + shape_str(q.shape()) + " k " + shape_str(k.shape()) + " v " + shape_str(v.shape()));
  MD_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "attention: head dim must be contiguous");
  backend_for(q.device()).attention_accumulate(q, k, v, scale, st);
}

Tensor attention_end(const AttentionState& st) {
  Tensor out = Tensor::empty(st.acc.shape());
  backend_for(st.acc.device()).attention_finalize(st, out);
  return out;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  AttentionState st = attention_begin(q);
  attention_accumulate(q, k, v, scale, st);
  return attention_end(st);
}

void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) {
  MD_CHECK(x.dim() == 4 && x.is_contiguous() && cos.dim() == 2 && cos.size(0) == x.size(1) &&
               cos.size(1) == x.size(3) && cos.shape() == sin.shape(),
           "rope: x " + shape_str(x.shape()) + " cos " + shape_str(cos.shape()));
  backend_for(x.device()).rope(x, cos.contiguous(), sin.contiguous());
}

Tensor timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                          float max_period) {
  // diffusers: exponent = -log(max_period) * arange(half, float32) / (half - shift); emb = t[:, None] * exp(exponent)
  // every step in float32, then [sin, cos] (or [cos, sin] when flipped), zero-padded when dim is odd.
  MD_CHECK(t.dim() == 1, "timestep_embedding: t must be 1-D");
  const int half = dim / 2;
  std::vector<float> tv = t.to_vector();
  Tensor out = Tensor::zeros({t.size(0), dim});
  float* o = out.f32();
  const float neg_log = float(-std::log(double(max_period)));
  for (int64_t b = 0; b < t.size(0); ++b) {
    for (int i = 0; i < half; ++i) {
      float exponent = neg_log * float(i);
      exponent = exponent / (float(half) - downscale_freq_shift);
      float arg = tv[b] * std::exp(exponent);
      arg = scale * arg;
      float s = std::sin(arg), c = std::cos(arg);
      o[b * dim + i] = flip_sin_to_cos ? c : s;
      o[b * dim + half + i] = flip_sin_to_cos ? s : c;
    }
  }
  return out;
}

Tensor patchify(const Tensor& x, int p) {
  MD_CHECK(x.dim() == 4 && x.size(2) % p == 0 && x.size(3) % p == 0,
           "patchify: " + shape_str(x.shape()) + " not divisible by patch " + std::to_string(p));
  const int64_t B = x.size(0), C = x.size(1), h = x.size(2) / p, w = x.size(3) / p;
  // [B, C, h, p, w, p] -> [B, h, w, C, p, p]
  Tensor v = x.contiguous().reshape({B, C, h, p, w, p}).permute({0, 2, 4, 1, 3, 5});
  return v.contiguous().reshape({B, h * w, C * p * p});
}

Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int p, int64_t channels) {
  const int64_t B = x.size(0);
  MD_CHECK(x.dim() == 3 && x.size(1) == h * w && x.size(2) == p * p * channels,
           "unpatchify: " + shape_str(x.shape()));
  // [B, h, w, p, q, c] -> [B, c, h, p, w, q]
  Tensor v = x.contiguous().reshape({B, h, w, p, p, channels}).permute({0, 5, 1, 3, 2, 4});
  return v.contiguous().reshape({B, channels, h * p, w * p});
}

}  // namespace meshdit::ops
