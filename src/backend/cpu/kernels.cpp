// The CPU backend: every matrix product through gemm() (backend/cpu/gemm.h: oneDNN, single-threaded
// calls; our pool hands out output tiles and a bf16/f16 weight chunk is widened by the thread that uses
// it, just before use), everything else in plain loops the compiler vectorises for the machine it is
// built on (-march=native). bench/README.md has the measurements behind the tile sizes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <vector>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/conv.h"
#include "backend/cpu/data.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/model_kernels.h"
#include "backend/cpu/quant_dot.h"
#include "backend/cpu/vec_math.h"
#include "backend/precision.h"
#include "core/align.h"
#include "core/fp8.h"
#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Per-thread scratch that grows and is reused across calls (weight tiles; attention.cpp keeps its own).
std::vector<float>& scratch(int slot) {
  thread_local std::vector<float> bufs[4];
  return bufs[slot];
}

// Activations over a run of floats. The tanh/sigmoid ones go through fast_exp (vec_math.h), so the loops
// vectorise; erf stays on libm.
void apply_act(float* y, int64_t n, Act act) {
  switch (act) {
    case Act::None:
      return;
    case Act::GeluTanh:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh_fast(y[i]);
      return;
    case Act::GeluErf:
      for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * y[i] * (1.0f + std::erf(y[i] * 0.7071067811865476f));
      return;
    case Act::SiLU:
      for (int64_t i = 0; i < n; ++i) y[i] = silu_fast(y[i]);
      return;
    case Act::QuickGelu:
      for (int64_t i = 0; i < n; ++i) y[i] = quick_gelu_fast(y[i]);
      return;
    case Act::Relu:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
      return;
    case Act::Tanh:  // Mochi's gates, on [B, dim] modulation vectors only: libm's tanh costs nothing there
      for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(y[i]);
      return;
  }
}

// Runs fn(task, thread) for every task in [0, n), handing tasks out one at a time: a thread slowed down
// (a bigger task, another process on its core) simply takes fewer of them.
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

// A weight as the products read it: N rows of K values, either a float dtype (F32, BF16, F16) or blocks of a
// quantized type (GGUF layouts), row r at data + r * row_bytes.
struct WeightRows {
  const uint8_t* data = nullptr;
  int64_t N = 0, K = 0, row_bytes = 0;
  DType dtype = DType::F32;        // the float dtype, when not quantized
  std::optional<QuantType> quant;  // the block type
  int64_t block = 1;               // values per block (1 for float rows)

  static WeightRows of(const Tensor& w) {
    return {static_cast<const uint8_t*>(w.raw()),
            w.size(0),
            w.size(1),
            w.size(1) * int64_t(dtype_size(w.dtype())),
            w.dtype(),
            std::nullopt,
            1};
  }
  static WeightRows quantized(const Tensor& rows, QuantType t, int64_t K) {
    return {static_cast<const uint8_t*>(rows.raw()), rows.size(0), K, rows.size(1), DType::F32, t, quant_block_size(t)};
  }
  bool is(DType t) const { return !quant && dtype == t; }
  template <class T>
  const T* row(int64_t n) const {
    return reinterpret_cast<const T*>(data + n * row_bytes);
  }
};

// Widens the block rows [n0, n0 + nb) x columns [k0, k0 + kc) of the weight into dst (float32, row-major,
// leading dimension kc). A quantized weight is decoded here, so it stays quantized in memory: k0 and kc are
// multiples of its block size.
void widen_tile(const WeightRows& w, int64_t n0, int64_t nb, int64_t k0, int64_t kc, float* dst) {
  if (w.quant) {
    const size_t block_bytes = quant_block_bytes(*w.quant);
    for (int64_t r = 0; r < nb; ++r)
      dequantize_row(*w.quant, w.row<uint8_t>(n0 + r) + k0 / w.block * block_bytes, dst + r * kc, kc);
    return;
  }
  if (w.dtype == DType::F32) {
    for (int64_t r = 0; r < nb; ++r) std::copy_n(w.row<float>(n0 + r) + k0, kc, dst + r * kc);
    return;
  }
  if (w.dtype == DType::BF16) {
    for (int64_t r = 0; r < nb; ++r) {
      const uint16_t* sr = w.row<uint16_t>(n0 + r) + k0;
      float* d = dst + r * kc;
      for (int64_t c = 0; c < kc; ++c) d[c] = bf16_to_f32(sr[c]);
    }
  } else if (w.dtype == DType::F16) {
    for (int64_t r = 0; r < nb; ++r) {
      const uint16_t* sr = w.row<uint16_t>(n0 + r) + k0;
      float* d = dst + r * kc;
      int64_t c = 0;
#if defined(__F16C__)
      for (; c + 8 <= kc; c += 8)
        _mm256_storeu_ps(d + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sr + c))));
#endif
      for (; c < kc; ++c) d[c] = f16_to_f32(sr[c]);
    }
  } else {
    MD_CHECK(false, std::string("linear: unsupported weight dtype ") + dtype_name(w.dtype));
  }
}

// Few rows of x (the adaptive norms' timestep projections have one): a GEMM would widen and then pack
// the whole weight for a handful of dot products, so each weight row is widened once into a small
// buffer and dotted with every row of x instead. The weight is read exactly once.
constexpr int64_t kSmallM = 8;

// Few rows of x against a Q8_0 / Q4_K weight in bf16 precision: x quantized to 8 bits per block of 32, then
// integer dot products straight from the weight's blocks (quant_dot.h), each weight byte read once and never
// decoded to floats.
void linear_small_m_int8(const Tensor& x, const WeightRows& w, const float* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.N, nb = K / kQ8Block;
  std::vector<int8_t> q(size_t(M * K));
  std::vector<float> d(size_t(M * nb));
  std::vector<int32_t> sums(size_t(M * nb));
  for (int64_t m = 0; m < M; ++m)
    quantize_row_q8(x.f32() + m * x.stride(0), K, q.data() + m * K, d.data() + m * nb, sums.data() + m * nb);
  float* yp = y.f32();
  constexpr int64_t kRows = 64;  // weight rows per task
  auto run = [&](int64_t task, int) {
    const int64_t n0 = task * kRows, n1 = std::min(N, n0 + kRows);
    float out[kSmallM];
    for (int64_t n = n0; n < n1; ++n) {
      quant_dot_rows(*w.quant, w.row<uint8_t>(n), K, q.data(), d.data(), sums.data(), M, out);
      for (int64_t m = 0; m < M; ++m) yp[m * N + n] = out[m] + (bias ? bias[n] : 0.0f);
    }
    for (int64_t m = 0; m < M; ++m) apply_act(yp + m * N + n0, n1 - n0, act);
  };
  parallel_tasks((N + kRows - 1) / kRows, run);
}

// In bf16 precision x and each weight row are rounded to bf16 values kept in f32: the dot products of
// bf16 operands with f32 accumulation, as the GEMM path computes them.
void linear_small_m(const Tensor& x, const WeightRows& w, const float* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.N;
  int64_t ldx = x.stride(0);
  const float* xp = x.f32();
  float* yp = y.f32();
  const bool bf16 = compute_precision() == Precision::BF16;
  const bool f32w = w.is(DType::F32) && !bf16;
  if (bf16 && w.quant && quant_dot_supported(*w.quant)) {
    linear_small_m_int8(x, w, bias, act, y);
    return;
  }
  std::vector<float> xr;
  if (bf16) {
    xr.resize(size_t(M * K));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xr[size_t(m * K + k)] = round_bf16(xp[m * ldx + k]);
    xp = xr.data();
    ldx = K;
  }
  constexpr int64_t kRows = 64;  // weight rows per task
  const int64_t tasks = (N + kRows - 1) / kRows;
  auto run = [&](int64_t task, int) {
    const int64_t n0 = task * kRows, n1 = std::min(N, n0 + kRows);
    auto& buf = scratch(0);
    if (!f32w && int64_t(buf.size()) < K) buf.resize(size_t(K));
    for (int64_t n = n0; n < n1; ++n) {
      const float* wr;
      if (w.is(DType::BF16)) {
        // A bf16 row is its own bf16 rounding: dotted as stored, read once, no widened copy.
        const uint16_t* row = w.row<uint16_t>(n);
        for (int64_t m = 0; m < M; ++m) yp[m * N + n] = dot_bf16(xp + m * ldx, row, K) + (bias ? bias[n] : 0.0f);
        continue;
      }
      if (f32w) {
        wr = w.row<float>(n);
      } else {
        widen_tile(w, n, 1, 0, K, buf.data());
        if (bf16)
          for (int64_t k = 0; k < K; ++k) buf[size_t(k)] = round_bf16(buf[size_t(k)]);
        wr = buf.data();
      }
      for (int64_t m = 0; m < M; ++m) yp[m * N + n] = dot(xp + m * ldx, wr, K) + (bias ? bias[n] : 0.0f);
    }
    for (int64_t m = 0; m < M; ++m) apply_act(yp + m * N + n0, n1 - n0, act);
  };
  if (M * N * K < 64 * 64 * 64) {
    for (int64_t t = 0; t < tasks; ++t) run(t, 0);
  } else {
    parallel_tasks(tasks, run);
  }
}

// amax (fmaxf over |v|: NaNs ignored, as the GPU's reduction) of n floats, then each replaced by its e4m3
// value under the scale amax / 448 (core/fp8.h): the value an FP8 product reads, without its scale. Returns the
// scale.
float quantize_e4m3_in_place(float* v, int64_t n) {
  std::vector<float> part(size_t(num_threads()), 0.0f);
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int tid) {
        float m = part[size_t(tid)];
        for (int64_t i = i0; i < i1; ++i) m = std::fmax(m, std::fabs(v[i]));
        part[size_t(tid)] = m;
      },
      1 << 14);
  float amax = 0.0f;
  for (float m : part) amax = std::fmax(amax, m);
  const float scale = e4m3_scale(amax);
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) v[i] = e4m3_to_f32(quantize_e4m3(v[i], scale));
      },
      1 << 14);
  return scale;
}

// FP8 precision, emulated (backend/precision.h): x and the weight quantized to e4m3 values held in floats, each
// with its per-tensor scale kept apart, an f32 product (a product of two e4m3 values is exact in f32, so only
// the summation order differs from a GPU's FP8 GEMM), then scaled by scale_w * scale_x, bias and activation.
// The weight is quantized at every call: slow, but it is the GPU's reference, not a CPU fast path.
void linear_fp8(const Tensor& x, const WeightRows& w, const Tensor* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.N;
  Tensor wq = Tensor::empty({N, K}, DType::F32), xq = Tensor::empty({M, K}, DType::F32);
  float* wp = wq.f32();
  float* xp = xq.f32();
  parallel_for(N, [&](int64_t n0, int64_t n1, int) { widen_tile(w, n0, n1 - n0, 0, K, wp + n0 * K); });
  for (int64_t m = 0; m < M; ++m) std::copy_n(x.f32() + m * x.stride(0), K, xp + m * K);
  const float scale = quantize_e4m3_in_place(wp, N * K) * quantize_e4m3_in_place(xp, M * K);
  std::vector<float> bias_f;
  if (bias) bias_f = bias->to_vector();
  float* yp = y.f32();
  constexpr int64_t kCols = 256;  // output columns per task
  parallel_tasks((N + kCols - 1) / kCols, [&](int64_t task, int) {
    const int64_t n0 = task * kCols, nb = std::min(N, n0 + kCols) - n0;
    gemm(M, nb, K, 1.0f, {xp, DType::F32, K, false}, {wp + n0 * K, DType::F32, K, true}, 0.0f, yp + n0, N);
    for (int64_t m = 0; m < M; ++m) {
      float* row = yp + m * N + n0;
      for (int64_t j = 0; j < nb; ++j) row[j] = row[j] * scale + (bias ? bias_f[size_t(n0 + j)] : 0.0f);
      apply_act(row, nb, act);
    }
  });
}

// y = act(x w^T + b) as a grid of output tiles [mb x nb] handed out dynamically to the pool's threads;
// each tile runs its K range in chunks of kc through single-threaded gemm(). A bf16/f16 weight chunk
// [nb x kc] is widened into a per-thread buffer just before use (it stays in cache for the GEMM to pack),
// and the bias and activation are applied to the tile right after its last chunk, while it is hot.
// Tile sizes: big enough that the GEMM's own packing of x and of the weight chunk are small next to the
// arithmetic, small enough that two threads get a few tiles each.
// In bf16 precision (compute_precision()) x is rounded to bf16 once per call and there are no K chunks;
// a bf16 weight is used as stored, any other weight tile [nb x K] is rounded to bf16 by the thread that
// uses it (per call: weights stay as loaded, so switching precision needs no reload).
void linear_rows(const Tensor& x, const WeightRows& w, const Tensor* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.N;
  const int64_t ldx = x.stride(0);
  const float* xp = x.f32();
  float* yp = y.f32();
  std::vector<float> bias_f;
  if (bias) bias_f = bias->to_vector();
  const bool f32w = w.is(DType::F32);
  if (compute_precision() == Precision::FP8) {
    linear_fp8(x, w, bias, act, y);
    return;
  }
  if (M < kSmallM) {
    linear_small_m(x, w, bias ? bias_f.data() : nullptr, act, y);
    return;
  }
  const bool bf16 = compute_precision() == Precision::BF16;
  // The rounded activations: a tensor, not a vector, so that the buffer comes from the host allocator's
  // cache (a fresh 30 MB vector per call cost a zeroing pass and a page fault per 4 KiB).
  Tensor xb_buf;
  uint16_t* xb = nullptr;
  if (bf16) {
    xb_buf = Tensor::empty({M, K}, DType::BF16);
    xb = xb_buf.data<uint16_t>();
    parallel_for(
        M,
        [&](int64_t r0, int64_t r1, int) {
          for (int64_t r = r0; r < r1; ++r) to_bf16(xp + r * ldx, K, xb + r * K);
        },
        16);
  }
  // Tile sizes measured with oneDNN (bench/README.md): output tiles about 768 columns wide, as many per thread.
  // Narrower tiles (256, chosen on a Zen 4 on 2026-12-01) ran the bf16 products of SD3.5's 154- and 256-row
  // shapes and Flux's 512-row ones 15-25 % slower on a Zen 5: every tile is one oneDNN call that packs its own
  // copy of the x panel, three times as many of them. An even split across threads matters when tiles are this
  // few (N = 2432 on 2 threads: 4 tiles of 608, not 3 of 811); tiles stay at least 64 columns wide.
  constexpr int64_t kMb = 768, kNb = 768, kKc = 2432;

  const int64_t T = num_threads();
  int64_t m_tiles = std::max<int64_t>(1, (M + kMb - 1) / kMb);
  int64_t n_tiles =
      std::min(T * std::max<int64_t>(1, std::llround(double(N) / double(kNb * T))), std::max<int64_t>(1, N / 64));
  // Too few tiles to keep every thread busy: halve the longer side, keeping tiles at least 64 wide.
  while (m_tiles * n_tiles < 2 * T) {
    const bool split_n = N / (2 * n_tiles) >= 64, split_m = M / (2 * m_tiles) >= 64;
    if (!split_n && !split_m) break;
    if (split_n && (!split_m || N / n_tiles >= M / m_tiles))
      n_tiles *= 2;
    else
      m_tiles *= 2;
  }
  if (M * N * K < 64 * 64 * 64) m_tiles = n_tiles = 1;  // tiny: threading costs more than it saves
  // K in chunks of about kKc, bounded on whole blocks of a quantized weight (its K is a multiple of the block size):
  // f32 products of a widened weight, and the bf16 products of a quantized one, which is decoded chunk by chunk.
  const int64_t k_chunks = std::clamp<int64_t>((K + kKc - 1) / kKc, 1, std::max<int64_t>(1, K / w.block));
  auto k_bound = [&](int64_t i, int64_t chunks) { return i == chunks ? K : K * i / chunks / w.block * w.block; };
  const int64_t f32_chunks = f32w || bf16 ? 1 : k_chunks;

  // Each thread's weight buffers for this call, from the host allocator (so the memory serves the activations
  // again once the product is done; per-thread vectors kept for the whole run held ~20 MB more at the peak).
  // A chunk [k_bound(i), k_bound(i + 1)) is at most K / chunks + one block long; tiles at most N / n_tiles + 1 wide.
  const int64_t max_nb = N / n_tiles + 1;
  auto max_chunk = [&](int64_t chunks) { return chunks == 1 ? K : K / chunks + w.block; };
  int64_t f32_floats = 0, bf16_values = 0;  // per thread
  if (bf16 && w.quant) {
    f32_floats = max_chunk(k_chunks);
    bf16_values = max_nb * max_chunk(k_chunks);
  } else if (bf16 && !w.is(DType::BF16)) {
    f32_floats = bf16_values = max_nb * K;
  } else if (!bf16 && !f32w) {
    f32_floats = max_nb * max_chunk(f32_chunks);
  }
  const int64_t slot_bytes = int64_t(align_up(uint64_t(f32_floats * 4 + bf16_values * 2), 64));
  Tensor work;
  if (slot_bytes > 0) work = Tensor::empty({T * slot_bytes}, DType::U8);
  auto f32_buf = [&](int tid) { return reinterpret_cast<float*>(work.data<uint8_t>() + tid * slot_bytes); };
  auto bf16_buf = [&](int tid) { return reinterpret_cast<uint16_t*>(f32_buf(tid) + f32_floats); };

  parallel_tasks(m_tiles * n_tiles, [&](int64_t tile, int tid) {
    const int64_t ni = tile % n_tiles, mi = tile / n_tiles;
    const int64_t n0 = N * ni / n_tiles, n1 = N * (ni + 1) / n_tiles, nb = n1 - n0;
    const int64_t m0 = M * mi / m_tiles, m1 = M * (mi + 1) / m_tiles, mb = m1 - m0;
    if (nb == 0 || mb == 0) return;
    if (bf16 && w.quant) {
      // Decoded chunk by chunk of K, one row at a time through a row buffer that stays in L1, straight into the
      // bf16 tile the GEMM reads: a whole [nb x K] tile decoded at once (12 MB for a 12288-wide weight) left the
      // cache and ran the products at half speed.
      float* row = f32_buf(tid);
      uint16_t* wtile = bf16_buf(tid);
      for (int64_t kc_i = 0; kc_i < k_chunks; ++kc_i) {
        const int64_t k0 = k_bound(kc_i, k_chunks), kc = k_bound(kc_i + 1, k_chunks) - k0;
        for (int64_t r = 0; r < nb; ++r) {
          widen_tile(w, n0 + r, 1, k0, kc, row);
          to_bf16(row, kc, wtile + r * kc);
        }
        gemm(mb, nb, kc, 1.0f, {xb + m0 * K + k0, DType::BF16, K, false}, {wtile, DType::BF16, kc, true},
             kc_i == 0 ? 0.0f : 1.0f, yp + m0 * N + n0, N);
      }
    } else if (bf16) {
      const uint16_t* wb = w.is(DType::BF16) ? w.row<uint16_t>(n0) : nullptr;
      if (!wb) {
        widen_tile(w, n0, nb, 0, K, f32_buf(tid));
        to_bf16(f32_buf(tid), nb * K, bf16_buf(tid));
        wb = bf16_buf(tid);
      }
      gemm(mb, nb, K, 1.0f, {xb + m0 * K, DType::BF16, K, false}, {wb, DType::BF16, K, true}, 0.0f, yp + m0 * N + n0,
           N);
    }
    for (int64_t kc_i = 0; kc_i < (bf16 ? 0 : f32_chunks); ++kc_i) {
      const int64_t k0 = k_bound(kc_i, f32_chunks), kc = k_bound(kc_i + 1, f32_chunks) - k0;
      const float* wp;
      int64_t ldw;
      if (f32w) {
        wp = w.row<float>(n0) + k0;
        ldw = K;
      } else {
        widen_tile(w, n0, nb, k0, kc, f32_buf(tid));
        wp = f32_buf(tid);
        ldw = kc;
      }
      gemm(mb, nb, kc, 1.0f, {xp + m0 * ldx + k0, DType::F32, ldx, false}, {wp, DType::F32, ldw, true},
           kc_i == 0 ? 0.0f : 1.0f, yp + m0 * N + n0, N);
    }
    if (!bias && act == Act::None) return;
    for (int64_t m = m0; m < m1; ++m) {
      float* row = yp + m * N + n0;
      if (bias) {
        const float* bp = bias_f.data() + n0;
        for (int64_t j = 0; j < nb; ++j) row[j] += bp[j];
      }
      apply_act(row, nb, act);
    }
  });
}

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y) {
  linear_rows(x, WeightRows::of(w), bias, act, y);
}

// A quantized weight runs the same tiles: each thread decodes the weight tile it is about to use (to f32, then
// to bf16 in bf16 precision) into its own buffer, so only the blocks stay resident and the decode is amortised
// over the tile's rows of x.
void linear_quantized(const Tensor& x, const Tensor& rows, QuantType type, const Tensor* bias, Act act, Tensor& y) {
  linear_rows(x, WeightRows::quantized(rows, type, x.size(1)), bias, act, y);
}

// layer_norm of R rows of C floats (row r at xp + r * ld) into contiguous yp, each row then handed to
// after_row(r, yr) while it is still in cache: how layer_norm_modulate adds the modulation without a
// second pass over memory, to the very float32 values layer_norm stores.
template <class AfterRow>
void layer_norm_rows(const float* xp, int64_t ld, int64_t R, int64_t C, const Tensor* w, const Tensor* b, float eps,
                     float* yp, AfterRow after_row) {
  std::vector<float> wf, bf;
  if (w) wf = w->to_vector();
  if (b) bf = b->to_vector();
  parallel_for(
      R,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = xp + r * ld;
          const double mean = sum_f64(xr, C) / double(C);
          const double var = sq_dev_f64(xr, C, mean) / double(C);
          const float inv = float(1.0 / std::sqrt(var + double(eps)));
          const float mu = float(mean);
          float* yr = yp + r * C;
          for (int64_t c = 0; c < C; ++c) {
            float v = (xr[c] - mu) * inv;
            if (w) v *= wf[size_t(c)];
            if (b) v += bf[size_t(c)];
            yr[c] = v;
          }
          after_row(r, yr);
        }
      },
      16);
}

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y) {
  layer_norm_rows(x.f32(), x.stride(0), x.size(0), x.size(1), w, b, eps, y.f32(), [](int64_t, float*) {});
}

void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  std::vector<float> wf;
  if (w) wf = w->to_vector();
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(
      R,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = xp + r * x.stride(0);
          const double ss = sq_dev_f64(xr, C, 0.0);
          const float inv = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
          float* yr = yp + r * C;
          for (int64_t c = 0; c < C; ++c) yr[c] = w ? (xr[c] * inv) * wf[size_t(c)] : xr[c] * inv;
        }
      },
      16);
}

// modulate's expression, in one place for modulate and layer_norm_modulate, whose bit-identity rests on it.
inline float modulated(float x, float shift, float scale) { return x * (1.0f + scale) + shift; }

void modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(
      B * L,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / L;
          const float* sh = shift.f32() + b * shift.stride(0);
          const float* sc = scale.f32() + b * scale.stride(0);
          const float* xr = xp + r * C;
          float* yr = yp + r * C;
          for (int64_t c = 0; c < C; ++c) yr[c] = modulated(xr[c], sh[c], sc[c]);
        }
      },
      16);
}

void layer_norm_modulate(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& shift,
                         const Tensor& scale, Tensor& y) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  const float* sh = shift.f32();
  const float* sc = scale.f32();
  layer_norm_rows(x.f32(), C, B * L, C, w, b, eps, y.f32(), [&](int64_t r, float* yr) {
    const float* shr = sh + (r / L) * shift.stride(0);
    const float* scr = sc + (r / L) * scale.stride(0);
    for (int64_t c = 0; c < C; ++c) yr[c] = modulated(yr[c], shr[c], scr[c]);
  });
}

void add_gated(Tensor& x, const Tensor* gate, const Tensor& y) {
  const int64_t C = x.size(-1);
  const int64_t rows = x.numel() / C;
  const int64_t L = x.dim() >= 3 ? x.size(-2) : rows;
  float* xp = x.f32();
  const float* yp = y.f32();
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
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
      },
      16);
}

void activation(Tensor& x, Act act) {
  float* p = x.f32();
  parallel_for(
      x.numel(), [&](int64_t i0, int64_t i1, int) { apply_act(p + i0, i1 - i0, act); }, 4096);
}

void softmax(Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1);
  float* p = x.f32();
  parallel_for(
      R,
      [&](int64_t r0, int64_t r1, int) {
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
      },
      4);
}

void rope(Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  float* xp = x.f32();
  const float* c = cos.f32();
  const float* s = sin.f32();
  parallel_for(
      B * L,
      [&](int64_t r0, int64_t r1, int) {
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
      },
      16);
}

}  // namespace
}  // namespace meshdit::cpu

namespace meshdit {

const Backend& cpu_backend() {
  static const Backend b{
      .name = "cpu",
      .linear = cpu::linear,
      .linear_quantized = cpu::linear_quantized,
      .layer_norm = cpu::layer_norm,
      .rms_norm = cpu::rms_norm,
      .modulate = cpu::modulate,
      .layer_norm_modulate = cpu::layer_norm_modulate,
      .add_gated = cpu::add_gated,
      .activation = cpu::activation,
      .softmax = cpu::softmax,
      .attention_accumulate = cpu::attention_accumulate,
      .attention_finalize = cpu::attention_finalize,
      .rope = cpu::rope,
      .conv2d = cpu::conv2d,
      .group_norm = cpu::group_norm,
      .upsample_nearest2x = cpu::upsample_nearest2x,
      .group_sums = cpu::group_sums,
      .group_norm_apply = cpu::group_norm_apply,
      .fill = cpu::fill,
      .affine = cpu::affine,
      .lerp = cpu::lerp,
      .clamp = cpu::clamp,
      .mul = cpu::mul,
      .div_add = cpu::div_add,

      // ---- memory, data movement, small ops (see backend.h) ----
      .device = Device::CPU,
      .allocator = &host_allocator(),
      // The host's strided copy is core's own (core copies before any backend is set up); the table
      // points at the same function, so there is one CPU copy.
      .copy = host_copy,
      .copy_to_host = cpu::copy_bytes,
      .copy_from_host = cpu::copy_bytes,
      .zero = cpu::zero,
      .free_memory = cpu::free_memory,
      .embedding = cpu::embedding,
      .timestep_embedding = cpu::timestep_embedding,
      .add_broadcast = cpu::add_broadcast,

      // ---- kernels for model code (backend/cpu/model_kernels.h) ----
      .rope_tables = cpu::rope_tables,
      .moments_from_sums = cpu::moments_from_sums,
      .blend = cpu::blend,
      .gather_bias = cpu::gather_bias,
      .mask_to_bias = cpu::mask_to_bias,
      .argmax_rows = cpu::argmax_rows,
      .find_rows = cpu::find_rows,
      .gather_rows = cpu::gather_rows,
      .axpby = cpu::axpby,
      .row_std = cpu::row_std,
      .row_l2 = cpu::row_l2,
      .scale_rows_by_ratio = cpu::scale_rows_by_ratio,
      .rope_half = cpu::rope_half,
      .l1_change_sums = cpu::l1_change_sums,
  };
  return b;
}

}  // namespace meshdit
