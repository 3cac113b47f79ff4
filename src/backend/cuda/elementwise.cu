// Element-wise kernels: one grid-stride loop each, float32, contiguous unless the contract says strided.
// Built with --fmad=false (CMakeLists.txt): a * b + c stays a rounded product and a rounded sum, as the CPU
// computes it, so results that must equal torch's float32 arithmetic bit for bit (axpby, div_add) do.
#include <algorithm>

#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

__global__ void act_kernel(float* y, int64_t n, Act act) { MD_GRID_LOOP(i, n) y[i] = act_value(y[i], act); }

__global__ void modulate_kernel(const float* x, const float* shift, int64_t shift_b, const float* scale,
                                int64_t scale_b, float* y, int64_t L, int64_t C, int64_t n) {
  MD_GRID_LOOP(i, n) {
    const int64_t c = i % C, b = i / C / L;
    y[i] = modulated(x[i], shift[b * shift_b + c], scale[b * scale_b + c]);
  }
}

__global__ void add_gated_kernel(float* x, const float* gate, int64_t gate_b, const float* y, int64_t L, int64_t C,
                                 int64_t n) {
  MD_GRID_LOOP(i, n) {
    if (gate) {
      const int64_t c = i % C, r = i / C;
      x[i] += gate[(r / L) * gate_b + c] * y[i];
    } else {
      x[i] += y[i];
    }
  }
}

__global__ void fill_kernel(float* y, int64_t n, float v) { MD_GRID_LOOP(i, n) y[i] = v; }
__global__ void affine_kernel(const float* x, float a, float b, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = x[i] * a + b;
}
__global__ void lerp_kernel(const float* a, const float* b, float w, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = a[i] + w * (b[i] - a[i]);
}
__global__ void clamp_kernel(float* x, float lo, float hi, int64_t n) {
  MD_GRID_LOOP(i, n) x[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}
__global__ void mul_kernel(const float* a, const float* b, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = a[i] * b[i];
}
__global__ void div_add_kernel(const float* x, float d, float b, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = __fadd_rn(__fdiv_rn(x[i], d), b);  // a true division, as the contract says
}
__global__ void add_broadcast_kernel(const float* a, Strided sa, const float* b, Strided sb, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = a[strided_offset(sa, i)] + b[strided_offset(sb, i)];
}
__global__ void axpby_kernel(float a, const float* x, float b, const float* y, float* out, int64_t n) {
  MD_GRID_LOOP(i, n) out[i] = y ? __fadd_rn(__fmul_rn(a, x[i]), __fmul_rn(b, y[i])) : __fmul_rn(a, x[i]);
}
__global__ void scale_rows_kernel(const float* x, const float* num, const float* den, float* y, int64_t row,
                                  int64_t n) {
  MD_GRID_LOOP(i, n) {
    const int64_t r = i / row;
    y[i] = __fmul_rn(x[i], __fdiv_rn(num[r], den[r]));
  }
}
__global__ void mask_to_bias_kernel(const float* m, float* y, int64_t n) {
  MD_GRID_LOOP(i, n) y[i] = m[i] > 0 ? 0.0f : -INFINITY;
}
// Lines [0, e) of b along dim (2: rows, 3: columns) blended with a's last e lines; n = elements to visit.
__global__ void blend_kernel(const float* a, float* b, int64_t planes, int64_t ha, int64_t hb, int64_t wa, int64_t wb,
                             int64_t e, int dim, int64_t n) {
  MD_GRID_LOOP(i, n) {
    int64_t line, ai, bi;
    if (dim == 2) {  // i over (plane, y < e, x < w), wa == wb
      const int64_t x = i % wb, y = (i / wb) % e, pl = i / wb / e;
      line = y;
      ai = (pl * ha + ha - e + y) * wa + x;
      bi = (pl * hb + y) * wb + x;
    } else {  // i over (row, x < e)
      const int64_t x = i % e, r = i / e;
      line = x;
      ai = r * wa + wa - e + x;
      bi = r * wb + x;
    }
    const float t = float(double(line) / double(e)), s = float(1.0 - double(line) / double(e));
    b[bi] = a[ai] * s + b[bi] * t;
  }
}
__global__ void upsample2x_kernel(const float* x, float* y, int64_t W, int64_t n) {
  MD_GRID_LOOP(i, n) {  // i over output elements: row R of 2W values, input row R / 2
    const int64_t ox = i % (2 * W), orow = i / (2 * W);
    y[i] = x[(orow / 2) * W + ox / 2];
  }
}

void check_f32(const Tensor& t, const char* op) {
  MD_CHECK(t.dtype() == DType::F32, std::string("cuda ") + op + ": needs float32, got " + dtype_name(t.dtype()));
}

}  // namespace

void apply_activation(float* y, int64_t n, Act act) {
  if (act != Act::None) MD_LAUNCH(act_kernel, n, y, n, act);
}

void modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y) {
  check_f32(shift, "modulate");
  check_f32(scale, "modulate");
  MD_CHECK(shift.stride(1) == 1 && scale.stride(1) == 1, "cuda modulate: shift / scale rows must be contiguous");
  const int64_t L = x.size(1), C = x.size(2), n = x.numel();
  MD_LAUNCH(modulate_kernel, n, x.f32(), shift.f32(), shift.stride(0), scale.f32(), scale.stride(0), y.f32(), L, C, n);
}

void add_gated(Tensor& x, const Tensor* gate, const Tensor& y) {
  const int64_t C = x.size(-1), n = x.numel();
  const int64_t rows = C ? n / C : 0, L = x.dim() >= 3 ? x.size(-2) : rows;
  if (gate) {
    check_f32(*gate, "add_gated");
    MD_CHECK(gate->stride(-1) == 1, "cuda add_gated: gate rows must be contiguous");
  }
  MD_LAUNCH(add_gated_kernel, n, x.f32(), gate ? gate->f32() : nullptr, gate ? gate->stride(0) : 0, y.f32(),
            std::max<int64_t>(L, 1), C, n);
}

void activation(Tensor& x, Act act) { apply_activation(x.f32(), x.numel(), act); }
void fill(Tensor& y, float value) { MD_LAUNCH(fill_kernel, y.numel(), y.f32(), y.numel(), value); }
void affine(const Tensor& x, float a, float b, Tensor& y) {
  MD_LAUNCH(affine_kernel, x.numel(), x.f32(), a, b, y.f32(), x.numel());
}
void lerp(const Tensor& a, const Tensor& b, float w, Tensor& y) {
  MD_LAUNCH(lerp_kernel, a.numel(), a.f32(), b.f32(), w, y.f32(), a.numel());
}
void clamp(Tensor& x, float lo, float hi) { MD_LAUNCH(clamp_kernel, x.numel(), x.f32(), lo, hi, x.numel()); }
void mul(const Tensor& a, const Tensor& b, Tensor& y) {
  MD_LAUNCH(mul_kernel, a.numel(), a.f32(), b.f32(), y.f32(), a.numel());
}
void div_add(const Tensor& x, float d, float b, Tensor& y) {
  MD_LAUNCH(div_add_kernel, x.numel(), x.f32(), d, b, y.f32(), x.numel());
}

void add_broadcast(const Tensor& a, const Tensor& b, Tensor& y) {
  const int64_t n = y.numel();
  MD_LAUNCH(add_broadcast_kernel, n, a.f32(), strided_as(y, a), b.f32(), strided_as(y, b), y.f32(), n);
}

void axpby(float a, const Tensor& x, float b, const Tensor* y, Tensor& out) {
  MD_LAUNCH(axpby_kernel, x.numel(), a, x.f32(), b, y ? y->f32() : nullptr, out.f32(), x.numel());
}

void scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den, Tensor& y) {
  const int64_t R = x.size(0), n = x.numel();
  if (R == 0) return;
  MD_LAUNCH(scale_rows_kernel, n, x.f32(), num.f32(), den.f32(), y.f32(), n / R, n);
}

void mask_to_bias(const Tensor& mask, Tensor& y) {
  MD_LAUNCH(mask_to_bias_kernel, mask.numel(), mask.f32(), y.f32(), mask.numel());
}

void blend(const Tensor& a, Tensor& b, int64_t extent, int dim) {
  const int64_t planes = b.size(0) * b.size(1);
  if (dim == 2) {
    const int64_t ha = a.size(2), hb = b.size(2), w = b.size(3);
    const int64_t e = std::min({ha, hb, extent}), n = planes * e * w;
    MD_LAUNCH(blend_kernel, n, a.f32(), b.f32(), planes, ha, hb, w, w, e, 2, n);
  } else {
    const int64_t wa = a.size(3), wb = b.size(3), rows = planes * b.size(2);
    const int64_t e = std::min({wa, wb, extent}), n = rows * e;
    MD_LAUNCH(blend_kernel, n, a.f32(), b.f32(), planes, 0, 0, wa, wb, e, 3, n);
  }
}

void upsample_nearest2x(const Tensor& x, Tensor& y) {
  const int64_t W = x.size(3), n = y.numel();
  MD_LAUNCH(upsample2x_kernel, n, x.f32(), y.f32(), W, n);
}

}  // namespace meshdit::cuda
