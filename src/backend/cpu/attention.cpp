// Flash-style attention on the CPU: one task per (batch, head, block of kBq queries), handed out
// dynamically; for each block of kBk keys, S = Q K^T (one small GEMM on strided rows, the softmax scale
// folded into it), online-softmax update of the running max/sum (max, then exp and sum in one pass, in
// the widest vectors the CPU runs: softmax_isa.h), rescale of the accumulator, then acc += P V (a second small GEMM).
// Memory is O(kBq x kBk) per thread. In bf16 precision q (pre-scaled), k and v are rounded once per call, not once per
// block pair, and P is rounded per block just before its product.
#include "backend/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "backend/cpu/softmax_isa.h"
#include "backend/cpu/vec_math.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {

std::atomic<Precision> g_attention_precision{Precision::F32};

// Runs fn(task, thread) for every task in [0, n), one at a time: a thread slowed down (a bigger task,
// another process on its core) simply takes fewer of them.
template <class F>
void parallel_tasks(int64_t n, const F& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(num_threads(), n), [&](int64_t, int64_t, int tid) {
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < n;
         t = next.fetch_add(1, std::memory_order_relaxed))
      fn(t, tid);
  });
}

// x [B, L, H, D] (D contiguous, any row strides) times s, rounded to bf16 into a contiguous [B, L, H, D].
// A tensor rather than a vector: its buffer comes from the host allocator's cache, not fresh zeroed pages.
Tensor rounded_bf16(const Tensor& x, float s) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  Tensor out_t = Tensor::empty({B, L, H, D}, DType::BF16);
  uint16_t* out = out_t.data<uint16_t>();
  const float* p = x.f32();
  parallel_for(
      B * L * H,
      [&](int64_t r0, int64_t r1, int) {
        std::vector<float> row(static_cast<size_t>(D));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t h = r % H, l = (r / H) % L, b = r / (H * L);
          const float* src = p + b * x.stride(0) + l * x.stride(1) + h * x.stride(2);
          if (s != 1.0f) {
            for (int64_t d = 0; d < D; ++d) row[size_t(d)] = src[d] * s;
            src = row.data();
          }
          to_bf16(src, D, out + r * D);
        }
      },
      64);
  return out_t;
}

}  // namespace

Status set_attention_precision(Precision p) {
  if (p == Precision::BF16 && !bf16_gemm_available())
    return make_error("bf16 attention: oneDNN has no bf16 matmul kernel for this CPU (" + gemm_kernel_line() + ")");
  g_attention_precision.store(p, std::memory_order_relaxed);
  return ok_status();
}

Precision attention_precision() { return g_attention_precision.load(std::memory_order_relaxed); }

void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask,
                          AttentionState& st) {
  // 256 x 256 (a 256 KiB score block, within a Zen 4 core's 1 MiB L2 with the Q, K and V blocks): the two
  // small GEMMs run at ~125-135 GFLOP/s per core against ~90-105 with 64 x 256 (AVX-512 kernel), and the K/V
  // blocks are packed 4x less often.
  constexpr int64_t kBq = 256, kBk = 256;
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  const int64_t q_blocks = (Lq + kBq - 1) / kBq;
  float* acc = st.acc.f32();
  float* mx = st.max.f32();
  float* sm = st.sum.f32();
  const int64_t ld_acc = H * D;
  const float* bias = mask && mask->bias.defined() ? mask->bias.f32() : nullptr;
  const int64_t bias_b = bias ? mask->bias.size(0) : 0, bias_h = bias ? mask->bias.size(1) : 0;
  const int64_t bias_q = bias ? mask->bias.size(2) : 0;  // 1: a key mask, the same row for every query
  const bool causal = mask && mask->causal;
  const bool bf16 = attention_precision() == Precision::BF16;
  const SoftmaxKernels& sk = softmax_kernels();
  Tensor qh, kh;
  if (bf16) {
    qh = rounded_bf16(q, scale);
    kh = rounded_bf16(k, 1.0f);
  }
  parallel_tasks(B * H * q_blocks, [&](int64_t task, int) {
    thread_local std::vector<float> sbuf;
    if (int64_t(sbuf.size()) < kBq * kBk) sbuf.resize(size_t(kBq * kBk));
    float* S = sbuf.data();
    const int64_t qb = task % q_blocks, h = (task / q_blocks) % H, b = task / (q_blocks * H);
    const int64_t i0 = qb * kBq, nq = std::min(kBq, Lq - i0);
    const float* qp = q.f32() + b * q.stride(0) + i0 * q.stride(1) + h * q.stride(2);
    const uint16_t* qhp = bf16 ? qh.data<uint16_t>() + ((b * Lq + i0) * H + h) * D : nullptr;
    float* ap = acc + (b * Lq + i0) * ld_acc + h * D;
    float* m = mx + (b * H + h) * Lq + i0;
    float* l = sm + (b * H + h) * Lq + i0;
    for (int64_t j0 = 0; j0 < Lk; j0 += kBk) {
      const int64_t nk = std::min(kBk, Lk - j0);
      if (bf16) {
        const uint16_t* khp = kh.data<uint16_t>() + ((b * Lk + j0) * H + h) * D;
        gemm(nq, nk, D, 1.0f, {qhp, DType::BF16, H * D, false}, {khp, DType::BF16, H * D, true}, 0.0f, S, nk);
      } else {
        const float* kp = k.f32() + b * k.stride(0) + j0 * k.stride(1) + h * k.stride(2);
        gemm(nq, nk, D, scale, {qp, DType::F32, q.stride(1), false}, {kp, DType::F32, k.stride(1), true}, 0.0f, S, nk);
      }
      if (bias) {
        const int64_t row = bias_q > 1 ? Lk : 0;
        const float* bp =
            bias + (((bias_b > 1 ? b : 0) * bias_h + (bias_h > 1 ? h : 0)) * bias_q + (bias_q > 1 ? i0 : 0)) * Lk + j0;
        for (int64_t r = 0; r < nq; ++r)
          for (int64_t c = 0; c < nk; ++c) S[r * nk + c] += bp[r * row + c];
      }
      if (causal)
        for (int64_t r = 0; r < nq; ++r)
          for (int64_t c = std::max<int64_t>(0, i0 + r + 1 - j0); c < nk; ++c) S[r * nk + c] = -INFINITY;
      for (int64_t r = 0; r < nq; ++r) {
        float* srow = S + r * nk;
        const float row_max = sk.max_of(srow, nk, m[r]);
        if (row_max == -INFINITY) {  // every key so far masked: nothing to add
          for (int64_t c = 0; c < nk; ++c) srow[c] = 0.0f;
          continue;
        }
        const float corr = m[r] == -INFINITY ? 0.0f : fast_exp(m[r] - row_max);
        l[r] = l[r] * corr + sk.exp_sub_sum(srow, nk, row_max);
        m[r] = row_max;
        if (corr != 1.0f) {
          float* arow = ap + r * ld_acc;
          for (int64_t d = 0; d < D; ++d) arow[d] *= corr;
        }
      }
      // P V stays f32 in both precisions: rounding the probabilities and V to bf16 as well made the attention
      // 1.55x the f32 rate instead of 1.2x, but doubled the 20-step tiny-shapes image's error against the
      // float64 reference (rel_l2 3.7e-2 with f32 attention, 4.5e-2 with bf16 Q K^T, 8.0e-2 with both
      // products in bf16; bench/README.md).
      const float* vp = v.f32() + b * v.stride(0) + j0 * v.stride(1) + h * v.stride(2);
      gemm(nq, D, nk, 1.0f, {S, DType::F32, nk, false}, {vp, DType::F32, v.stride(1), false}, 1.0f, ap, ld_acc);
    }
  });
}

void attention_finalize(const AttentionState& st, Tensor& out) {
  const int64_t B = st.acc.size(0), L = st.acc.size(1), H = st.acc.size(2), D = st.acc.size(3);
  const float* a = st.acc.f32();
  const float* l = st.sum.f32();
  float* o = out.f32();
  parallel_for(
      B * L,
      [&](int64_t r0, int64_t r1, int) {
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
      },
      16);
}

}  // namespace meshdit::cpu
