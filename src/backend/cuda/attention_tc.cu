// Flash attention on tensor cores (FlashAttention-2's scheme) for bf16 precision, head dims 64 and 128, no bias.
//
// Two launches per call:
//   1. K and V are rounded to bf16 into [B, H, Lk_pad, D] scratch tensors (Lk_pad = Lk rounded up to the key
//      tile; the rows past Lk are zero, so a tile is always whole and a padded V row is never garbage times
//      zero). Converting while staging each tile would read the float32 K and V once per query block (twice
//      the bytes through L2 of this once-per-call pass, which costs a few per cent of the kernel).
//   2. One block per (128 query rows, head, batch), 8 warps of 16 query rows. Each warp keeps its q rows
//      (times scale, rounded to bf16) as mma A fragments in registers, read from global once. K/V tiles of
//      64 keys are copied to shared memory with cp.async, double-buffered (the next tile is in flight while
//      this one is used). Per tile and warp: S = Q K^T (mma.sync m16n8k16 bf16 -> f32, K fragments by
//      ldmatrix), the online softmax in f32 registers (running max m, running sum l, acc rescaled by
//      exp(m_old - m_new)), P rounded to bf16 and reused from the S accumulators as A fragments of P V
//      (V fragments by ldmatrix.trans). l sums the bf16-rounded P, so the weights P V uses are normalised
//      by their own sum.
// Shared-memory rows are D + 8 bf16 long: 144 or 272 bytes, 16 bytes past a multiple of 128, so the eight
// 16-byte rows one ldmatrix phase reads fall in distinct banks.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4 g + t. A (16 x 16, row-major) registers hold
// the pairs (row g, cols 2t, 2t+1), (row g+8, cols 2t..), (row g, cols 2t+8..), (row g+8, cols 2t+8..); B
// (16 x 8, "col") holds (rows 2t, 2t+1, col g), (rows 2t+8, 2t+9, col g); C/D (16 x 8, f32) holds (row g,
// cols 2t, 2t+1), (row g+8, cols 2t, 2t+1). The lower half of a 32-bit register is the lower index.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/attention_tc.cuh"
#include "backend/cuda/common.cuh"
#include "backend/precision.h"

namespace meshdit::cuda {
namespace {

constexpr int kWarps = 8, kRows = 16 * kWarps, kKeys = 64;
constexpr float kLog2e = 1.4426950408889634f;

struct TcArgs {
  const float* q;
  int64_t qs0, qs1, qs2;  // strides of q's [B, L, H] (D contiguous)
  const uint16_t* k;      // [B, H, Lk_pad, D] bf16, rows past Lk zero
  const uint16_t* v;
  int64_t Lq, Lk, Lk_pad, H;
  float scale;
  bool causal;
  float* acc;  // [B, Lq, H, D]
  float* max;  // [B, H, Lq]
  float* sum;
};

// Two floats rounded to nearest even into one bf16 pair (lo in the lower half): for finite values and
// infinities the same bits as f32_to_bf16, in one instruction.
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a b on one 16 x 8 x 16 tile.
__device__ inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x [B, L, H, D] float32 (D contiguous, strides s0..s2) -> out [B, H, Lpad, D] bf16, zero past L; four
// elements per step (D is a multiple of 4; vec4: x and its strides allow float4 loads).
__global__ void heads_to_bf16_kernel(const float* x, int64_t s0, int64_t s1, int64_t s2, int64_t L, int64_t H,
                                     int64_t D, int64_t Lpad, bool vec4, uint16_t* out, int64_t n4) {
  MD_GRID_LOOP(e, n4) {
    const int64_t d = (e % (D / 4)) * 4, r = e / (D / 4), j = r % Lpad, bh = r / Lpad, h = bh % H, b = bh / H;
    float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (j < L) {
      const float* p = x + b * s0 + j * s1 + h * s2 + d;
      if (vec4) {
        f = *reinterpret_cast<const float4*>(p);
      } else {
        f = make_float4(p[0], p[1], p[2], p[3]);
      }
    }
    *reinterpret_cast<uint2*>(out + 4 * e) = make_uint2(pack_bf16(f.x, f.y), pack_bf16(f.z, f.w));
  }
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attention_tc_kernel(TcArgs a) {
  constexpr int S = D + 8;                          // shared-memory row, bf16 elements
  constexpr int KS = D / 16;                        // k-steps of Q K^T
  constexpr int NT = D / 8;                         // 8-wide column tiles of the output
  constexpr int ST = kKeys / 8;                     // 8-wide key tiles of S
  extern __shared__ __align__(16) uint16_t smem[];  // [2 buffers][K, V][kKeys][S]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t block_row0 = int64_t(blockIdx.x) * kRows;
  const int64_t w0 = block_row0 + 16 * warp;  // the warp's first query row
  const int64_t row[2] = {w0 + g, w0 + g + 8};
  const bool live[2] = {row[0] < a.Lq, row[1] < a.Lq};

  uint32_t qf[KS][4];
  {
    const float* qb = a.q + b * a.qs0 + h * a.qs2;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int rr = r & 1, c = 16 * ks + 2 * t + 8 * (r >> 1);
        float lo = 0.0f, hi = 0.0f;
        if (live[rr]) {
          const float* p = qb + row[rr] * a.qs1 + c;
          lo = p[0] * a.scale;
          hi = p[1] * a.scale;
        }
        qf[ks][r] = pack_bf16(lo, hi);
      }
  }

  // The running state of rows g and g+8; l is this thread's share of the row sum (the state's sum starts in
  // lane t == 0), added up over the row's four lanes at the end.
  float m[2], l[2], o[NT][4];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t st = (b * a.H + h) * a.Lq + row[rr];
    m[rr] = live[rr] ? a.max[st] : -INFINITY;
    l[rr] = live[rr] && t == 0 ? a.sum[st] : 0.0f;
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int rr = c >> 1;
      const int64_t d = 8 * nt + 2 * t + (c & 1);
      o[nt][c] = live[rr] ? a.acc[((b * a.Lq + row[rr]) * a.H + h) * D + d] : 0.0f;
    }

  const uint16_t* kb = a.k + (b * a.H + h) * a.Lk_pad * D;
  const uint16_t* vb = a.v + (b * a.H + h) * a.Lk_pad * D;
  int64_t tiles = a.Lk_pad / kKeys;
  if (a.causal) {  // keys past the block's last row are masked for all of its rows
    const int64_t last = (block_row0 + kRows < a.Lq ? block_row0 + kRows : a.Lq) - 1;
    const int64_t need = last / kKeys + 1;
    if (need < tiles) tiles = need;
  }
  auto stage = [&](int64_t tile, int buf) {
    uint16_t* ks = smem + buf * 2 * kKeys * S;
    uint16_t* vs = ks + kKeys * S;
    const uint16_t* kg = kb + tile * kKeys * D;
    const uint16_t* vg = vb + tile * kKeys * D;
    for (int c = threadIdx.x; c < kKeys * D / 8; c += kWarps * 32) {
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      cp_async16(ks + r * S + col, kg + r * D + col);
      cp_async16(vs + r * S + col, vg + r * D + col);
    }
    cp_async_commit();
  };

  // ldmatrix: lanes 8i..8i+7 give the row addresses of matrix i.
  const int mi = lane / 8, mr = lane % 8;
  stage(0, 0);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int buf = int(tile & 1);
    if (tile + 1 < tiles) {
      stage(tile + 1, buf ^ 1);
      cp_async_wait<1>();  // all but the newest group: this tile's copies are done
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ... and visible to every warp
    const uint16_t* ks = smem + buf * 2 * kKeys * S;
    const uint16_t* vs = ks + kKeys * S;
    const int64_t j0 = tile * kKeys;

    // S = Q K^T: matrices 0..3 of an x4 load are (keys +0, dims +0), (keys +0, dims +8), (keys +8, dims +0),
    // (keys +8, dims +8), i.e. the B fragments of key tiles 2p and 2p+1.
    float s[ST][4];
#pragma unroll
    for (int n = 0; n < ST; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
      for (int p = 0; p < ST / 2; ++p) {
        uint32_t kf[4];
        ldmatrix_x4(kf, ks + (16 * p + mr + 8 * (mi >> 1)) * S + 16 * kk + 8 * (mi & 1));
        mma_bf16(s[2 * p], qf[kk], kf[0], kf[1]);
        mma_bf16(s[2 * p + 1], qf[kk], kf[2], kf[3]);
      }

    // Keys past Lk, and (causal) keys after the row: -inf. Warp-uniform test.
    if (j0 + kKeys > a.Lk || (a.causal && j0 + kKeys - 1 > w0)) {
#pragma unroll
      for (int n = 0; n < ST; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t j = j0 + 8 * n + 2 * t + (c & 1);
          if (j >= a.Lk || (a.causal && j > row[c >> 1])) s[n][c] = -INFINITY;
        }
    }

    // Online softmax, row by row (the four lanes of a row hold its 64 scores, 16 each).
    uint32_t pf[ST][2];  // P in bf16: (row g, keys 2t, 2t+1), (row g+8, ...) of key tile n
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = m[rr];
#pragma unroll
      for (int n = 0; n < ST; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * rr], s[n][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // Equal maxima (both -inf included: nothing seen yet) need no rescale; a row that has seen no key
      // subtracts 0, so exp(-inf - 0) = 0 rather than exp(-inf + inf) = NaN.
      const float corr = m[rr] == mx ? 1.0f : exp2f((m[rr] - mx) * kLog2e);
      const float base = mx == -INFINITY ? 0.0f : mx;
      m[rr] = mx;
      float ls = 0.0f;
#pragma unroll
      for (int n = 0; n < ST; ++n) {
        const uint32_t pk = pack_bf16(exp2f((s[n][2 * rr] - base) * kLog2e), exp2f((s[n][2 * rr + 1] - base) * kLog2e));
        pf[n][rr] = pk;
        ls += __uint_as_float(pk << 16) + __uint_as_float(pk & 0xffff0000u);
      }
      l[rr] = l[rr] * corr + ls;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        o[nt][2 * rr] *= corr;
        o[nt][2 * rr + 1] *= corr;
      }
    }

    // O += P V over 16-key steps. P's A fragment for keys 16 kk.. is key tiles 2kk and 2kk+1; an x4 .trans
    // load's matrices are (keys +0, dims +0), (keys +8, dims +0), (keys +0, dims +8), (keys +8, dims +8),
    // i.e. the B fragments of output column tiles 2p and 2p+1.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t pa[4] = {pf[2 * kk][0], pf[2 * kk][1], pf[2 * kk + 1][0], pf[2 * kk + 1][1]};
#pragma unroll
      for (int p = 0; p < NT / 2; ++p) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vs + (16 * kk + mr + 8 * (mi & 1)) * S + 16 * p + 8 * (mi >> 1));
        mma_bf16(o[2 * p], pa, vf[0], vf[1]);
        mma_bf16(o[2 * p + 1], pa, vf[2], vf[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next iteration's copies refill it
  }

#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    if (live[rr] && t == 0) {
      const int64_t st = (b * a.H + h) * a.Lq + row[rr];
      a.max[st] = m[rr];
      a.sum[st] = l[rr];
    }
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int rr = c >> 1;
      const int64_t d = 8 * nt + 2 * t + (c & 1);
      if (live[rr]) a.acc[((b * a.Lq + row[rr]) * a.H + h) * D + d] = o[nt][c];
    }
}

Tensor heads_to_bf16(const Tensor& x, int64_t Lpad) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  Tensor out = Tensor::empty({B, H, Lpad, D}, DType::BF16, Device::CUDA);
  const float* p = x.f32();
  const bool vec4 =
      reinterpret_cast<uintptr_t>(p) % 16 == 0 && x.stride(0) % 4 == 0 && x.stride(1) % 4 == 0 && x.stride(2) % 4 == 0;
  const int64_t n4 = B * H * Lpad * D / 4;
  MD_LAUNCH(heads_to_bf16_kernel, n4, p, x.stride(0), x.stride(1), x.stride(2), L, H, D, Lpad, vec4,
            out.data<uint16_t>(), n4);
  return out;
}

template <int D>
void launch(const TcArgs& a, int64_t B) {
  constexpr size_t smem = sizeof(uint16_t) * 2 * 2 * kKeys * (D + 8);  // 36 KiB (D 64), 68 KiB (D 128)
  static const bool configured = [] {  // above 48 KiB a kernel must ask for its shared memory
    MD_CUDA(cudaFuncSetAttribute(attention_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(unsigned((a.Lq + kRows - 1) / kRows), unsigned(a.H), unsigned(B));
  attention_tc_kernel<D><<<grid, kWarps * 32, smem, stream()>>>(a);
  MD_CUDA_LAUNCHED(attention_tc_kernel);
}

}  // namespace

bool attention_tc_applies(const Tensor& q, const AttentionMask* mask) {
  const int64_t D = q.size(3);
  return bf16_outside_linears(compute_precision()) && (D == 64 || D == 128) && !(mask && mask->bias.defined());
}

void attention_accumulate_tc(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                             AttentionState& st) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  MD_CHECK(D == 64 || D == 128, "cuda tensor-core attention: head dim " + std::to_string(D) + " is not 64 or 128");
  MD_CHECK((Lq + kRows - 1) / kRows <= 0x7fffffff, "cuda tensor-core attention: too many query rows");
  const int64_t Lk_pad = (Lk + kKeys - 1) / kKeys * kKeys;
  const Tensor kh = heads_to_bf16(k, Lk_pad), vh = heads_to_bf16(v, Lk_pad);
  TcArgs a{};
  a.q = q.f32();
  a.qs0 = q.stride(0), a.qs1 = q.stride(1), a.qs2 = q.stride(2);
  a.k = kh.data<uint16_t>();
  a.v = vh.data<uint16_t>();
  a.Lq = Lq, a.Lk = Lk, a.Lk_pad = Lk_pad, a.H = H;
  a.scale = scale;
  a.causal = causal;
  a.acc = st.acc.f32();
  a.max = st.max.f32();
  a.sum = st.sum.f32();
  if (D == 64)
    launch<64>(a, B);
  else
    launch<128>(a, B);
  // kh and vh go back to the caching allocator here; stream order keeps the kernel's reads before any reuse.
}

}  // namespace meshdit::cuda
