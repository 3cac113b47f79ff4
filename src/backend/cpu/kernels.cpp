// The CPU backend: GEMM through OpenBLAS (single-threaded calls, our pool splits the work so that bf16
// weights are widened once per tile by the thread that uses them), everything else in plain loops the
// compiler vectorises for the machine it is built on (-march=native).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/conv.h"
#include "backend/cpu/vec_math.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {

// Per-thread scratch that grows and is reused across calls (weight tiles, score blocks).
std::vector<float>& scratch(int slot) {
  thread_local std::vector<float> bufs[4];
  return bufs[slot];
}

inline float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float quick_gelu(float x) { return x / (1.0f + std::exp(-1.702f * x)); }

void apply_act(float* y, int64_t n, Act act) {
  switch (act) {
    case Act::None: return;
    case Act::GeluTanh: for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh(y[i]); return;
    case Act::GeluErf: for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf(y[i]); return;
    case Act::SiLU: for (int64_t i = 0; i < n; ++i) y[i] = silu(y[i]); return;
    case Act::QuickGelu: for (int64_t i = 0; i < n; ++i) y[i] = quick_gelu(y[i]); return;
    case Act::Relu: for (int64_t i = 0; i < n; ++i) y[i] = y[i] > 0.0f ? y[i] : 0.0f; return;
  }
}

// Widens rows [n0, n0 + nb) of a [N, K] weight into dst (float32, row-major).
void widen_rows(const Tensor& w, int64_t n0, int64_t nb, float* dst) {
  const int64_t K = w.size(1);
  const int64_t count = nb * K;
  if (w.dtype() == DType::BF16) {
    const uint16_t* s = w.data<uint16_t>() + n0 * K;
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(s[i]);
  } else if (w.dtype() == DType::F16) {
    const uint16_t* s = w.data<uint16_t>() + n0 * K;
    for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(s[i]);
  } else {
    MD_CHECK(false, std::string("linear: unsupported weight dtype ") + dtype_name(w.dtype()));
  }
}

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const int64_t ldx = x.stride(0);
  const float* xp = x.f32();
  float* yp = y.f32();
  std::vector<float> bias_f;
  if (bias) bias_f = bias->to_vector();
  const bool f32w = w.dtype() == DType::F32;

  // Work grid: column blocks of the output (rows of W), and row blocks of x when N alone cannot feed
  // every thread. A bf16 weight tile is widened once per column block.
  const int T = num_threads();
  const int64_t kTile = 128;  // rows of W widened at a time
  int64_t n_blocks = std::max<int64_t>(1, std::min<int64_t>(T, (N + 63) / 64));
  int64_t m_blocks = std::max<int64_t>(1, std::min<int64_t>(T / n_blocks, (M + 63) / 64));
  if (M * N * K < 64 * 64 * 64) n_blocks = m_blocks = 1;  // tiny: threading costs more than it saves
  parallel_for(n_blocks * m_blocks, [&](int64_t b0, int64_t b1, int) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t nb_i = blk % n_blocks, mb_i = blk / n_blocks;
      const int64_t n0 = N * nb_i / n_blocks, n1 = N * (nb_i + 1) / n_blocks;
      const int64_t m0 = M * mb_i / m_blocks, m1 = M * (mb_i + 1) / m_blocks;
      for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
        const int64_t nb = std::min(kTile, n1 - t0);
        const float* wp;
        if (f32w) {
          wp = w.data<float>() + t0 * K;
        } else {
          auto& buf = scratch(0);
          if (int64_t(buf.size()) < nb * K) buf.resize(size_t(nb * K));
          widen_rows(w, t0, nb, buf.data());
          wp = buf.data();
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m1 - m0), int(nb), int(K), 1.0f, xp + m0 * ldx,
                    int(ldx), wp, int(K), 0.0f, yp + m0 * N + t0, int(N));
        for (int64_t m = m0; m < m1; ++m) {
          float* row = yp + m * N + t0;
          if (bias) {
            const float* bp = bias_f.data() + t0;
            for (int64_t j = 0; j < nb; ++j) row[j] += bp[j];
          }
          apply_act(row, nb, act);
        }
      }
    }
  });
}

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  std::vector<float> wf, bf;
  if (w) wf = w->to_vector();
  if (b) bf = b->to_vector();
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * x.stride(0);
      double mean = 0;
      for (int64_t c = 0; c < C; ++c) mean += xr[c];
      mean /= double(C);
      double var = 0;
      for (int64_t c = 0; c < C; ++c) {
        double d = xr[c] - mean;
        var += d * d;
      }
      var /= double(C);
      const float inv = float(1.0 / std::sqrt(var + double(eps)));
      const float mu = float(mean);
      float* yr = yp + r * C;
      for (int64_t c = 0; c < C; ++c) {
        float v = (xr[c] - mu) * inv;
        if (w) v *= wf[size_t(c)];
        if (b) v += bf[size_t(c)];
        yr[c] = v;
      }
    }
  }, 16);
}

void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  std::vector<float> wf;
  if (w) wf = w->to_vector();
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * x.stride(0);
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
      const float inv = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
      float* yr = yp + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = w ? (xr[c] * inv) * wf[size_t(c)] : xr[c] * inv;
    }
  }, 16);
}

void modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(B * L, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L;
      const float* sh = shift.f32() + b * shift.stride(0);
      const float* sc = scale.f32() + b * scale.stride(0);
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * (1.0f + sc[c]) + sh[c];
    }
  }, 16);
}

void add_gated(Tensor& x, const Tensor* gate, const Tensor& y) {
  const int64_t C = x.size(-1);
  const int64_t rows = x.numel() / C;
  const int64_t L = x.dim() >= 3 ? x.size(-2) : rows;
  float* xp = x.f32();
  const float* yp = y.f32();
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float* xr = xp + r * C;
      const float* yr = yp + r * C;
      if (gate) {
        const float* g = gate->f32() + (r / L) * gate->stride(0);
        for (int64_t c = 0; c < C; ++c) xr[c] += g[c] * yr[c];
      } else {
        for (int64_t c = 0; c < C; ++c) xr[c] += yr[c];
      }
    }
  }, 16);
}

void activation(Tensor& x, Act act) {
  float* p = x.f32();
  parallel_for(x.numel(), [&](int64_t i0, int64_t i1, int) { apply_act(p + i0, i1 - i0, act); }, 4096);
}

void softmax(Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1);
  float* p = x.f32();
  parallel_for(R, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = p + r * C;
      float mx = -INFINITY;
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, row[c]);
      if (mx == -INFINITY) {  // fully masked row: zeros, not NaN
        for (int64_t c = 0; c < C; ++c) row[c] = 0;
        continue;
      }
      double s = 0;
      for (int64_t c = 0; c < C; ++c) {
        row[c] = std::exp(row[c] - mx);
        s += row[c];
      }
      const float inv = float(1.0 / s);
      for (int64_t c = 0; c < C; ++c) row[c] *= inv;
    }
  }, 4);
}

// Flash-style attention on the CPU: one task per (batch, head, block of kBq queries); for each block of
// kBk keys, S = Q K^T (one small GEMM on strided rows, no copies), online-softmax update of the running
// max/sum, rescale of the accumulator, then acc += P V (a second small GEMM). Memory is O(kBq x kBk).
void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask,
                          AttentionState& st) {
  constexpr int64_t kBq = 64, kBk = 256;
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  const int64_t q_blocks = (Lq + kBq - 1) / kBq;
  float* acc = st.acc.f32();
  float* mx = st.max.f32();
  float* sm = st.sum.f32();
  const int64_t ld_acc = H * D;
  const float* bias = mask && mask->bias.defined() ? mask->bias.f32() : nullptr;
  const int64_t bias_b = bias ? mask->bias.size(0) : 0, bias_h = bias ? mask->bias.size(1) : 0;
  const bool causal = mask && mask->causal;
  parallel_for(B * H * q_blocks, [&](int64_t t0, int64_t t1, int) {
    auto& sbuf = scratch(1);
    if (int64_t(sbuf.size()) < kBq * kBk) sbuf.resize(size_t(kBq * kBk));
    float* S = sbuf.data();
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t qb = task % q_blocks, h = (task / q_blocks) % H, b = task / (q_blocks * H);
      const int64_t i0 = qb * kBq, nq = std::min(kBq, Lq - i0);
      const float* qp = q.f32() + b * q.stride(0) + i0 * q.stride(1) + h * q.stride(2);
      float* ap = acc + (b * Lq + i0) * ld_acc + h * D;
      float* m = mx + (b * H + h) * Lq + i0;
      float* l = sm + (b * H + h) * Lq + i0;
      for (int64_t j0 = 0; j0 < Lk; j0 += kBk) {
        const int64_t nk = std::min(kBk, Lk - j0);
        const float* kp = k.f32() + b * k.stride(0) + j0 * k.stride(1) + h * k.stride(2);
        const float* vp = v.f32() + b * v.stride(0) + j0 * v.stride(1) + h * v.stride(2);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(nq), int(nk), int(D), scale, qp, int(q.stride(1)),
                    kp, int(k.stride(1)), 0.0f, S, int(nk));
        if (bias) {
          const float* bp = bias + (((bias_b > 1 ? b : 0) * bias_h + (bias_h > 1 ? h : 0)) * Lq + i0) * Lk + j0;
          for (int64_t r = 0; r < nq; ++r)
            for (int64_t c = 0; c < nk; ++c) S[r * nk + c] += bp[r * Lk + c];
        }
        if (causal)
          for (int64_t r = 0; r < nq; ++r)
            for (int64_t c = std::max<int64_t>(0, i0 + r + 1 - j0); c < nk; ++c) S[r * nk + c] = -INFINITY;
        for (int64_t r = 0; r < nq; ++r) {
          float* srow = S + r * nk;
          float row_max = m[r];
          for (int64_t c = 0; c < nk; ++c) row_max = std::max(row_max, srow[c]);
          if (row_max == -INFINITY) {  // every key so far masked: nothing to add
            for (int64_t c = 0; c < nk; ++c) srow[c] = 0.0f;
            continue;
          }
          const float corr = m[r] == -INFINITY ? 0.0f : fast_exp(m[r] - row_max);
          float s = 0;
          for (int64_t c = 0; c < nk; ++c) {
            srow[c] = fast_exp(srow[c] - row_max);
            s += srow[c];
          }
          l[r] = l[r] * corr + s;
          m[r] = row_max;
          if (corr != 1.0f) {
            float* arow = ap + r * ld_acc;
            for (int64_t d = 0; d < D; ++d) arow[d] *= corr;
          }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(nq), int(D), int(nk), 1.0f, S, int(nk), vp,
                    int(v.stride(1)), 1.0f, ap, int(ld_acc));
      }
    }
  });
}

void attention_finalize(const AttentionState& st, Tensor& out) {
  const int64_t B = st.acc.size(0), L = st.acc.size(1), H = st.acc.size(2), D = st.acc.size(3);
  const float* a = st.acc.f32();
  const float* l = st.sum.f32();
  float* o = out.f32();
  parallel_for(B * L, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, i = r % L;
      for (int64_t h = 0; h < H; ++h) {
        const float s = l[(b * H + h) * L + i];
        const float inv = s > 0 ? 1.0f / s : 0.0f;
        const float* ar = a + (r * H + h) * D;
        float* orow = o + (r * H + h) * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = ar[d] * inv;
      }
    }
  }, 16);
}

void rope(Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  float* xp = x.f32();
  const float* c = cos.f32();
  const float* s = sin.f32();
  parallel_for(B * L, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t l = r % L;
      const float* cl = c + l * D;
      const float* sl = s + l * D;
      for (int64_t h = 0; h < H; ++h) {
        float* v = xp + (r * H + h) * D;
        for (int64_t d = 0; d < D; d += 2) {
          const float x0 = v[d], x1 = v[d + 1];
          // out = x * cos + rotate_half(x) * sin, rotate_half on pairs: (-x1, x0)
          v[d] = x0 * cl[d] - x1 * sl[d];
          v[d + 1] = x1 * cl[d + 1] + x0 * sl[d + 1];
        }
      }
    }
  }, 16);
}

bool init_blas() {
  // Our pool owns the cores; OpenBLAS must not start threads of its own inside our tasks.
  openblas_set_num_threads(1);
  return true;
}

}  // namespace
}  // namespace meshdit::cpu

namespace meshdit {

const Backend& cpu_backend() {
  static const bool blas_ready = cpu::init_blas();
  (void)blas_ready;
  static const Backend b{
      "cpu",
      cpu::linear,
      cpu::layer_norm,
      cpu::rms_norm,
      cpu::modulate,
      cpu::add_gated,
      cpu::activation,
      cpu::softmax,
      cpu::attention_accumulate,
      cpu::attention_finalize,
      cpu::rope,
      cpu::conv2d,
      cpu::group_norm,
      cpu::upsample_nearest2x,
  };
  return b;
}

}  // namespace meshdit
