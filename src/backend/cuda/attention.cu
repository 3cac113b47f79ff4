// Flash-style attention. In bf16 precision, head dims 64 and 128 without a bias go to the tensor-core kernel
// (attention_tc.cu: FlashAttention-2's scheme on mma.sync); everything else (f32 precision, other head dims,
// bias masks) runs the float32 CUDA-core kernel below, which has the contract's full semantics (ring
// attention's running state, bias broadcast, causal order, head dims up to 256).
//
// Numerics of bf16 precision on CUDA: the tensor-core kernel rounds q (pre-scaled), k, v and the
// probabilities P to bf16 (f32 accumulation, f32 softmax), as FlashAttention does; the CPU backend rounds only
// q and k (its P V stays f32, cpu/attention.cpp says why). Against a float32 reference that is a relative L2
// error around 1e-2 rather than a few 1e-3 (tests/backend/cuda_attention_test.cpp). The CUDA-core kernel's
// bf16 path rounds q and k only, as the CPU.
//
// The CUDA-core kernel:
// One block per (batch, head, kRows query rows), kWarps warps of kRowsPerWarp rows each. For each tile of
// kKeys keys, K and V are staged in shared memory (K rows padded by one float so that lane j reading key j
// hits its own bank); lane j scores key j against the warp's query row, the warp reduces the tile's max and
// sum with shuffles (online softmax, as the CPU kernel: running max m, running sum l, acc rescaled by
// exp(m_old - m_new)), and each lane accumulates P V for the head dims it owns (d = lane + 32 i). The running
// state lives in registers between tiles and in the AttentionState tensors between calls.
// In bf16 precision q (pre-scaled) and k are rounded to bf16 before the scores, as the CPU's bf16 Q K^T; the
// softmax and P V stay float32.
#include "backend/cuda/attention_tc.cuh"
#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/kernels.h"
#include "backend/precision.h"

namespace meshdit::cuda {
namespace {

constexpr int kWarps = 4, kRowsPerWarp = 8, kRows = kWarps * kRowsPerWarp, kKeys = 32;

struct AttnArgs {
  const float* q;
  const float* k;
  const float* v;
  int64_t qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2;  // strides of [B, L, H] (D contiguous)
  int64_t B, Lq, Lk, H, D;
  float scale;
  bool bf16, causal;
  const float* bias;  // [bias_b, bias_h, bias_q, Lk] contiguous, or null
  int64_t bias_b, bias_h, bias_q;
  float* acc;  // [B, Lq, H, D]
  float* max;  // [B, H, Lq]
  float* sum;
};

// DI = head dims per lane (D <= 32 DI).
template <int DI>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttnArgs a) {
  constexpr int Dp = 32 * DI;
  extern __shared__ float smem[];
  float* qs = smem;                   // [kRows][Dp]
  float* ks = qs + kRows * Dp;        // [kKeys][Dp + 1]
  float* vs = ks + kKeys * (Dp + 1);  // [kKeys][Dp]
  float* ps = vs + kKeys * Dp;        // [kWarps][kKeys]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i0 = int64_t(blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t D = a.D;

  for (int e = threadIdx.x; e < kRows * Dp; e += blockDim.x) {
    const int r = e / Dp, d = e % Dp;
    const int64_t i = i0 + r;
    float val = 0.0f;
    if (i < a.Lq && d < D) {
      val = a.q[b * a.qs0 + i * a.qs1 + h * a.qs2 + d];
      if (a.bf16) val = round_bf16(val * a.scale);
    }
    qs[e] = val;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][DI];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    const bool live = i < a.Lq;
    const int64_t st = (b * a.H + h) * a.Lq + i;
    m[rr] = live ? a.max[st] : -INFINITY;
    l[rr] = live ? a.sum[st] : 0.0f;
#pragma unroll
    for (int di = 0; di < DI; ++di) {
      const int64_t d = lane + 32 * di;
      acc[rr][di] = live && d < D ? a.acc[((b * a.Lq + i) * a.H + h) * D + d] : 0.0f;
    }
  }

  for (int64_t j0 = 0; j0 < a.Lk; j0 += kKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < kKeys * Dp; e += blockDim.x) {
      const int r = e / Dp, d = e % Dp;
      const int64_t j = j0 + r;
      float kv = 0.0f, vv = 0.0f;
      if (j < a.Lk && d < D) {
        kv = a.k[b * a.ks0 + j * a.ks1 + h * a.ks2 + d];
        if (a.bf16) kv = round_bf16(kv);
        vv = a.v[b * a.vs0 + j * a.vs1 + h * a.vs2 + d];
      }
      ks[r * (Dp + 1) + d] = kv;
      vs[r * Dp + d] = vv;
    }
    __syncthreads();
    const int64_t j = j0 + lane;
    const int nk = int(a.Lk - j0 < kKeys ? a.Lk - j0 : kKeys);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = i0 + r;
      if (i >= a.Lq) break;  // rows are in order: the rest of the warp's rows are past the end too
      float s = -INFINITY;
      if (j < a.Lk && !(a.causal && j > i)) {
        const float* qr = qs + r * Dp;
        const float* kr = ks + lane * (Dp + 1);
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
        s = a.bf16 ? dot : dot * a.scale;
        if (a.bias) {
          const int64_t bb = a.bias_b > 1 ? b : 0, bh = a.bias_h > 1 ? h : 0, bq = a.bias_q > 1 ? i : 0;
          s += a.bias[((bb * a.bias_h + bh) * a.bias_q + bq) * a.Lk + j];
        }
      }
      float tile_max = s;
      for (int o = 16; o > 0; o >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float row_max = fmaxf(m[rr], tile_max);
      if (row_max == -INFINITY) continue;  // every key so far masked: nothing to add (warp-uniform)
      const float corr = m[rr] == -INFINITY ? 0.0f : expf(m[rr] - row_max);
      const float p = s == -INFINITY ? 0.0f : expf(s - row_max);
      float psum = p;
      for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
      l[rr] = l[rr] * corr + psum;
      m[rr] = row_max;
      ps[warp * kKeys + lane] = p;
      __syncwarp();
#pragma unroll
      for (int di = 0; di < DI; ++di) acc[rr][di] *= corr;
      for (int jj = 0; jj < nk; ++jj) {
        const float pj = ps[warp * kKeys + jj];
        const float* vr = vs + jj * Dp + lane;
#pragma unroll
        for (int di = 0; di < DI; ++di) acc[rr][di] = fmaf(pj, vr[32 * di], acc[rr][di]);
      }
      __syncwarp();  // ps is rewritten by the next row
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    if (i >= a.Lq) break;
    if (lane == 0) {
      const int64_t st = (b * a.H + h) * a.Lq + i;
      a.max[st] = m[rr];
      a.sum[st] = l[rr];
    }
#pragma unroll
    for (int di = 0; di < DI; ++di) {
      const int64_t d = lane + 32 * di;
      if (d < D) a.acc[((b * a.Lq + i) * a.H + h) * D + d] = acc[rr][di];
    }
  }
}

template <int DI>
void launch(const AttnArgs& a) {
  constexpr int Dp = 32 * DI;
  const size_t smem =
      sizeof(float) * (size_t(kRows) * Dp + size_t(kKeys) * (Dp + 1) + size_t(kKeys) * Dp + kWarps * kKeys);
  static const bool configured = [smem] {  // above 48 KiB a kernel must ask for its shared memory
    MD_CUDA(cudaFuncSetAttribute(attention_kernel<DI>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(unsigned((a.Lq + kRows - 1) / kRows), unsigned(a.H), unsigned(a.B));
  attention_kernel<DI><<<grid, kWarps * 32, smem, stream()>>>(a);
  MD_CUDA_LAUNCHED(attention_kernel);
}

__global__ void finalize_kernel(const float* acc, const float* sum, float* out, int64_t L, int64_t H, int64_t D,
                                int64_t n) {
  MD_GRID_LOOP(k, n) {
    const int64_t h = (k / D) % H, r = k / D / H, i = r % L, b = r / L;
    const float s = sum[(b * H + h) * L + i];
    const float inv = s > 0 ? 1.0f / s : 0.0f;
    out[k] = acc[k] * inv;
  }
}

}  // namespace

void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask,
                          AttentionState& st) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  MD_CHECK(D <= 256, "attention: head dim " + std::to_string(D) + " > 256 is not implemented on cuda");
  MD_CHECK(H <= 65535 && B <= 65535, "attention: more than 65535 heads or batch entries are not implemented on cuda");
  if (B == 0 || Lq == 0 || H == 0 || Lk == 0 || D == 0) return;
  MD_CHECK(q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32,
           "cuda attention: q, k, v must be float32");
  MD_CHECK(st.acc.is_contiguous() && st.max.is_contiguous() && st.sum.is_contiguous(),
           "cuda attention: the state must be contiguous");
  if (attention_tc_applies(q, mask)) {
    attention_accumulate_tc(q, k, v, scale, mask && mask->causal, st);
    return;
  }
  AttnArgs a{};
  a.q = q.f32();
  a.k = k.f32();
  a.v = v.f32();
  a.qs0 = q.stride(0), a.qs1 = q.stride(1), a.qs2 = q.stride(2);
  a.ks0 = k.stride(0), a.ks1 = k.stride(1), a.ks2 = k.stride(2);
  a.vs0 = v.stride(0), a.vs1 = v.stride(1), a.vs2 = v.stride(2);
  a.B = B, a.Lq = Lq, a.Lk = Lk, a.H = H, a.D = D;
  a.scale = scale;
  a.bf16 = bf16_outside_linears(compute_precision());  // FP8 runs attention as BF16
  a.causal = mask && mask->causal;
  if (mask && mask->bias.defined()) {
    a.bias = mask->bias.f32();
    a.bias_b = mask->bias.size(0), a.bias_h = mask->bias.size(1), a.bias_q = mask->bias.size(2);
  }
  a.acc = st.acc.f32();
  a.max = st.max.f32();
  a.sum = st.sum.f32();
  switch ((D + 31) / 32) {
    case 1:
      launch<1>(a);
      break;
    case 2:
      launch<2>(a);
      break;
    case 3:
      launch<3>(a);
      break;
    case 4:
      launch<4>(a);
      break;
    case 5:
      launch<5>(a);
      break;
    case 6:
      launch<6>(a);
      break;
    case 7:
      launch<7>(a);
      break;
    default:
      launch<8>(a);
      break;
  }
}

void attention_finalize(const AttentionState& st, Tensor& out) {
  const int64_t L = st.acc.size(1), H = st.acc.size(2), D = st.acc.size(3), n = st.acc.numel();
  MD_LAUNCH(finalize_kernel, n, st.acc.f32(), st.sum.f32(), out.f32(), L, H, D, n);
}

}  // namespace meshdit::cuda
