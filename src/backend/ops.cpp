#include "backend/ops.h"

#include <cmath>
#include <initializer_list>

#include "core/trace.h"

namespace meshdit {

const char* act_name(Act a) {
  switch (a) {
    case Act::None: return "none";
    case Act::GeluTanh: return "gelu_tanh";
    case Act::GeluErf: return "gelu";
    case Act::SiLU: return "silu";
    case Act::QuickGelu: return "quick_gelu";
    case Act::Relu: return "relu";
    case Act::Tanh: return "tanh";
  }
  return "?";
}

}  // namespace meshdit

namespace meshdit::ops {

// The device of op's tensor inputs (absent optional ones, null or undefined, are skipped). Inputs on two
// devices are a caller's bug: weights reach a device through place(), activations through to_device().
Device common_device(const char* op, std::initializer_list<const Tensor*> inputs) {
  const Tensor* first = nullptr;
  for (const Tensor* t : inputs) {
    if (!t || !t->defined()) continue;
    if (!first) {
      first = t;
      continue;
    }
    MD_CHECK(t->device() == first->device(), std::string(op) + ": inputs on " + device_name(first->device()) +
                                                 " and " + device_name(t->device()) +
                                                 " (ops::place / ops::to_device move tensors)");
  }
  return first ? first->device() : Device::CPU;
}

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

// A contiguous float32 view or copy of x, on x's device (what the element-wise kernels take).
Tensor f32c(const Tensor& x) {
  Tensor f = x.dtype() == DType::F32 ? x : x.to(DType::F32);
  return f.is_contiguous() ? f : f.contiguous();
}

// A fresh contiguous float32 copy of x, for the kernels that work in place on their output.
Tensor f32_copy(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  backend_for(x.device()).copy(x, y);
  return y;
}

}  // namespace

Tensor to_device(const Tensor& t, Device dev) {
  if (!t.defined() || t.device() == dev) return t;
  // Both ends set up, so that their allocators and copies are registered with core.
  (void)backend_for(t.device());
  (void)backend_for(dev);
  Tensor out = Tensor::empty(t.shape(), t.dtype(), dev);
  copy_into(t, out);
  return out;
}

Tensor place(const Tensor& weight, Device dev) {
  // On the host the mapped view is already where the kernels read it; a copy would only double the
  // resident memory. A device gets the weight in its checkpoint dtype, widened by the kernels as on the CPU.
  return to_device(weight, dev);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act) {
  Span span("kernel", "linear");
  MD_CHECK(w.dim() == 2 && x.size(-1) == w.size(1),
           "linear: input " + shape_str(x.shape()) + " vs weight " + shape_str(w.shape()));
  const Device dev = common_device("linear", {&x, &w, bias});
  Tensor x2 = as_rows(x.dtype() == DType::F32 ? x : x.to(DType::F32));
  Tensor y = Tensor::empty({x2.size(0), w.size(0)}, DType::F32, dev);
  backend_for(dev).linear(x2, w.is_contiguous() ? w : w.contiguous(), bias, act, y);
  return y.reshape(with_last(x.shape(), w.size(0)));
}

Tensor linear_quantized(const Tensor& x, const Tensor& rows, QuantType type, int64_t K, const Tensor* bias, Act act) {
  Span span("kernel", "linear");
  MD_CHECK(rows.dim() == 2 && rows.dtype() == DType::U8 && x.size(-1) == K && K % quant_block_size(type) == 0 &&
               uint64_t(rows.size(1)) == quant_row_bytes(type, K),
           std::string("linear: input ") + shape_str(x.shape()) + " vs " + quant_type_name(type) + " weight of " +
               std::to_string(K) + " columns stored as " + shape_str(rows.shape()) + " bytes");
  const Device dev = common_device("linear", {&x, &rows, bias});
  Tensor x2 = as_rows(x.dtype() == DType::F32 ? x : x.to(DType::F32));
  Tensor y = Tensor::empty({x2.size(0), rows.size(0)}, DType::F32, dev);
  backend_for(dev).linear_quantized(x2, rows.is_contiguous() ? rows : rows.contiguous(), type, bias, act, y);
  return y.reshape(with_last(x.shape(), rows.size(0)));
}

Tensor layer_norm(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps) {
  Span span("kernel", "layer_norm");
  const Device dev = common_device("layer_norm", {&x, weight, bias});
  Tensor x2 = as_rows(x);
  Tensor y = Tensor::empty(x2.shape(), DType::F32, dev);
  backend_for(dev).layer_norm(x2, weight, bias, eps, y);
  return y.reshape(x.shape());
}

Tensor rms_norm(const Tensor& x, const Tensor* weight, float eps) {
  Span span("kernel", "rms_norm");
  const Device dev = common_device("rms_norm", {&x, weight});
  Tensor x2 = as_rows(x);
  Tensor y = Tensor::empty(x2.shape(), DType::F32, dev);
  backend_for(dev).rms_norm(x2, weight, eps, y);
  return y.reshape(x.shape());
}

Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  MD_CHECK(x.dim() == 3 && shift.dim() == 2 && scale.dim() == 2 && shift.size(1) == x.size(2) &&
               scale.size(1) == x.size(2) && shift.size(0) == x.size(0),
           "modulate: x " + shape_str(x.shape()) + " shift " + shape_str(shift.shape()));
  const Device dev = common_device("modulate", {&x, &shift, &scale});
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), DType::F32, dev);
  backend_for(dev).modulate(xc, shift, scale, y);
  return y;
}

Tensor layer_norm_modulate(const Tensor& x, const Tensor* weight, const Tensor* bias, float eps, const Tensor& shift,
                           const Tensor& scale) {
  Span span("kernel", "layer_norm_modulate");
  MD_CHECK(x.dim() == 3 && shift.dim() == 2 && scale.dim() == 2 && shift.size(1) == x.size(2) &&
               scale.size(1) == x.size(2) && shift.size(0) == x.size(0) && scale.size(0) == x.size(0),
           "layer_norm_modulate: x " + shape_str(x.shape()) + " shift " + shape_str(shift.shape()) + " scale " +
               shape_str(scale.shape()));
  const Device dev = common_device("layer_norm_modulate", {&x, weight, bias, &shift, &scale});
  // The kernels read shift / scale rows with any row stride (a chunk of a modulation tensor) but a
  // contiguous last dimension.
  auto rows = [](const Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); };
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), DType::F32, dev);
  backend_for(dev).layer_norm_modulate(xc, weight, bias, eps, rows(shift), rows(scale), y);
  return y;
}

void add_gated_(Tensor& x, const Tensor& gate, const Tensor& y) {
  MD_CHECK(x.is_contiguous() && x.shape() == y.shape(), "add_gated_: shapes " + shape_str(x.shape()) + " vs " +
                                                             shape_str(y.shape()));
  const Device dev = common_device("add_gated_", {&x, &gate, &y});
  Tensor yc = f32c(y);
  backend_for(dev).add_gated(x, gate.defined() ? &gate : nullptr, yc);
}

void add_(Tensor& x, const Tensor& y) { add_gated_(x, Tensor(), y); }

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor r = f32_copy(a);
  add_(r, b);
  return r;
}

Tensor activation(const Tensor& x, Act act) {
  Tensor y = f32_copy(x);
  backend_for(x.device()).activation(y, act);
  return y;
}

void softmax_(Tensor& x) {
  MD_CHECK(x.is_contiguous(), "softmax_: needs a contiguous tensor");
  Tensor r = x.reshape({x.numel() / x.size(-1), x.size(-1)});
  backend_for(x.device()).softmax(r);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  MD_CHECK(a.shape() == b.shape(), "mul: shapes " + shape_str(a.shape()) + " vs " + shape_str(b.shape()));
  const Device dev = common_device("mul", {&a, &b});
  Tensor y = Tensor::empty(a.shape(), DType::F32, dev);
  backend_for(dev).mul(f32c(a), f32c(b), y);
  return y;
}

Tensor full(const Shape& shape, float value, Device dev) {
  Tensor y = Tensor::empty(shape, DType::F32, dev);
  backend_for(dev).fill(y, value);
  return y;
}

Tensor affine(const Tensor& x, float a, float b) {
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  backend_for(x.device()).affine(f32c(x), a, b, y);
  return y;
}

Tensor div_add(const Tensor& x, float d, float b) {
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  backend_for(x.device()).div_add(f32c(x), d, b, y);
  return y;
}

Tensor lerp(const Tensor& a, const Tensor& b, float w) {
  MD_CHECK(a.shape() == b.shape(), "lerp: shapes " + shape_str(a.shape()) + " vs " + shape_str(b.shape()));
  const Device dev = common_device("lerp", {&a, &b});
  Tensor y = Tensor::empty(a.shape(), DType::F32, dev);
  backend_for(dev).lerp(f32c(a), f32c(b), w, y);
  return y;
}

void clamp_(Tensor& x, float lo, float hi) {
  MD_CHECK(x.dtype() == DType::F32 && x.is_contiguous(), "clamp_: needs a contiguous float32 tensor");
  backend_for(x.device()).clamp(x, lo, hi);
}

Tensor add_broadcast(const Tensor& a, const Tensor& b) {
  MD_CHECK(a.dim() == b.dim(), "add_broadcast: rank mismatch");
  Shape shape(size_t(a.dim()));
  for (int64_t d = 0; d < a.dim(); ++d) {
    MD_CHECK(a.size(d) == b.size(d) || a.size(d) == 1 || b.size(d) == 1, "add_broadcast: shapes " +
                                                                             shape_str(a.shape()) + " vs " +
                                                                             shape_str(b.shape()));
    shape[size_t(d)] = std::max(a.size(d), b.size(d));
  }
  const Device dev = common_device("add_broadcast", {&a, &b});
  Tensor y = Tensor::empty(shape, DType::F32, dev);
  backend_for(dev).add_broadcast(a.to(DType::F32).expand(shape), b.to(DType::F32).expand(shape), y);
  return y;
}

Result<Tensor> embedding(const Tensor& table, const Tensor& ids) {
  MD_CHECK(table.dim() == 2, "embedding: table must be [V, D]");
  const Device dev = common_device("embedding", {&table, &ids});
  const int64_t V = table.size(0), D = table.size(1);
  Tensor idc = ids.to(DType::I64).contiguous().reshape({ids.numel()});
  Shape shape = ids.shape();
  shape.push_back(D);
  Tensor out = Tensor::empty(shape, DType::F32, dev);
  Tensor rows = out.reshape({ids.numel(), D});
  int64_t bad = 0;
  if (!backend_for(dev).embedding(table, idc, rows, &bad))
    return make_error("token id " + std::to_string(bad) + " is outside the embedding table of " + std::to_string(V) +
                      " rows");
  return out;
}

AttentionState attention_begin(const Tensor& q) {
  MD_CHECK(q.dim() == 4, "attention: q must be [B, L, H, D], got " + shape_str(q.shape()));
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  AttentionState st;
  st.acc = full(q.shape(), 0.0f, q.device());
  st.max = full({B, H, L}, -INFINITY, q.device());
  st.sum = full({B, H, L}, 0.0f, q.device());
  return st;
}

void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, AttentionState& st,
                          const AttentionMask* mask) {
  MD_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape() && q.size(0) == k.size(0) &&
               q.size(2) == k.size(2) && q.size(3) == k.size(3),
           "attention: q " + shape_str(q.shape()) + " k " + shape_str(k.shape()) + " v " + shape_str(v.shape()));
  MD_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "attention: head dim must be contiguous");
  if (mask && mask->bias.defined()) {
    const Tensor& b = mask->bias;
    MD_CHECK(b.dim() == 4 && b.dtype() == DType::F32 && b.is_contiguous() && (b.size(0) == 1 || b.size(0) == q.size(0)) &&
                 (b.size(1) == 1 || b.size(1) == q.size(2)) && (b.size(2) == 1 || b.size(2) == q.size(1)) &&
                 b.size(3) == k.size(1),
             "attention: mask bias " + shape_str(b.shape()) + " does not broadcast to [B, H, Lq, Lk]");
  }
  MD_CHECK(!(mask && mask->causal) || q.size(1) == k.size(1), "attention: causal mask needs Lq == Lk");
  const Device dev =
      common_device("attention", {&q, &k, &v, &st.acc, &st.max, &st.sum, mask ? &mask->bias : nullptr});
  backend_for(dev).attention_accumulate(q, k, v, scale, mask, st);
}

Tensor attention_end(const AttentionState& st) {
  Tensor out = Tensor::empty(st.acc.shape(), DType::F32, st.acc.device());
  backend_for(st.acc.device()).attention_finalize(st, out);
  return out;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask) {
  Span span("kernel", "attention");
  AttentionState st = attention_begin(q);
  attention_accumulate(q, k, v, scale, st, mask);
  return attention_end(st);
}

void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) {
  MD_CHECK(x.dim() == 4 && x.is_contiguous() && cos.dim() == 2 && cos.size(0) == x.size(1) &&
               cos.size(1) == x.size(3) && cos.shape() == sin.shape(),
           "rope: x " + shape_str(x.shape()) + " cos " + shape_str(cos.shape()));
  const Device dev = common_device("rope", {&x, &cos, &sin});
  backend_for(dev).rope(x, cos.contiguous(), sin.contiguous());
}

Tensor timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                          float max_period) {
  MD_CHECK(t.dim() == 1 && dim >= 0, "timestep_embedding: t must be 1-D, got " + shape_str(t.shape()));
  Tensor tf = f32c(t);
  Tensor out = Tensor::empty({t.size(0), dim}, DType::F32, t.device());
  backend_for(t.device()).timestep_embedding(tf, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period, out);
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

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p) {
  Span span("kernel", "conv2d");
  MD_CHECK(x.dim() == 4 && w.dim() == 4 && x.size(1) == w.size(1),
           "conv2d: input " + shape_str(x.shape()) + " vs weight " + shape_str(w.shape()));
  MD_CHECK(
      p.stride_h >= 1 && p.stride_w >= 1 && p.pad_top >= 0 && p.pad_left >= 0 && p.pad_bottom >= 0 && p.pad_right >= 0,
      "conv2d: strides must be positive and paddings non-negative");
  MD_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == w.size(0)),
           "conv2d: bias " + (bias ? shape_str(bias->shape()) : std::string()) + " vs weight " + shape_str(w.shape()));
  const int64_t ho = p.out_h(x.size(2), w.size(2)), wo = p.out_w(x.size(3), w.size(3));
  MD_CHECK(x.size(2) + p.pad_top + p.pad_bottom >= w.size(2) && x.size(3) + p.pad_left + p.pad_right >= w.size(3),
           "conv2d: kernel " + shape_str(w.shape()) + " larger than the padded input " + shape_str(x.shape()));
  const Device dev = common_device("conv2d", {&x, &w, bias});
  Tensor xc = f32c(x);
  Tensor y = Tensor::empty({x.size(0), w.size(0), ho, wo}, DType::F32, dev);
  backend_for(dev).conv2d(xc, w.is_contiguous() ? w : w.contiguous(), bias, p, y);
  return y;
}

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor* weight, const Tensor* bias, float eps, Act act) {
  Span span("kernel", "group_norm");
  MD_CHECK(x.dim() >= 2 && groups >= 1 && x.size(1) % groups == 0,
           "group_norm: " + std::to_string(groups) + " groups do not divide the channels of " + shape_str(x.shape()));
  MD_CHECK(!weight || weight->shape() == Shape{x.size(1)}, "group_norm: weight does not match the channels");
  MD_CHECK(!bias || bias->shape() == Shape{x.size(1)}, "group_norm: bias does not match the channels");
  const Device dev = common_device("group_norm", {&x, weight, bias});
  Tensor xc = f32c(x);
  Tensor y = Tensor::empty(x.shape(), DType::F32, dev);
  backend_for(dev).group_norm(xc, groups, weight, bias, eps, act, y);
  return y;
}

Tensor group_sums(const Tensor& x, int64_t groups, const Tensor* mean) {
  Span span("kernel", "group_sums");
  MD_CHECK(x.dim() >= 2 && groups >= 1 && x.size(1) % groups == 0,
           "group_sums: " + std::to_string(groups) + " groups do not divide the channels of " + shape_str(x.shape()));
  const Shape stats{x.size(0), groups};
  MD_CHECK(!mean || mean->shape() == stats,
           "group_sums: mean " + (mean ? shape_str(mean->shape()) : std::string()) + " is not " + shape_str(stats));
  const Device dev = common_device("group_sums", {&x, mean});
  Tensor xc = f32c(x);
  Tensor m = mean ? f32c(*mean) : Tensor();
  Tensor out = Tensor::empty(stats, DType::F32, dev);
  backend_for(dev).group_sums(xc, groups, mean ? &m : nullptr, out);
  return out;
}

Tensor group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* weight,
                        const Tensor* bias, Act act) {
  Span span("kernel", "group_norm_apply");
  MD_CHECK(
      x.dim() >= 2 && groups >= 1 && x.size(1) % groups == 0,
      "group_norm_apply: " + std::to_string(groups) + " groups do not divide the channels of " + shape_str(x.shape()));
  const Shape stats{x.size(0), groups};
  MD_CHECK(mean.shape() == stats && rstd.shape() == stats, "group_norm_apply: mean " + shape_str(mean.shape()) +
                                                               " / rstd " + shape_str(rstd.shape()) + " are not " +
                                                               shape_str(stats));
  MD_CHECK(!weight || weight->shape() == Shape{x.size(1)}, "group_norm_apply: weight does not match the channels");
  MD_CHECK(!bias || bias->shape() == Shape{x.size(1)}, "group_norm_apply: bias does not match the channels");
  const Device dev = common_device("group_norm_apply", {&x, &mean, &rstd, weight, bias});
  Tensor xc = f32c(x);
  Tensor y = Tensor::empty(x.shape(), DType::F32, dev);
  backend_for(dev).group_norm_apply(xc, groups, f32c(mean), f32c(rstd), weight, bias, act, y);
  return y;
}

Tensor upsample_nearest2x(const Tensor& x) {
  MD_CHECK(x.dim() == 4, "upsample_nearest2x: x must be [B, C, H, W], got " + shape_str(x.shape()));
  Tensor xc = f32c(x);
  Tensor y = Tensor::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32, x.device());
  backend_for(x.device()).upsample_nearest2x(xc, y);
  return y;
}

}  // namespace meshdit::ops
