// The precision of the backend's matrix products, one process-wide setting: the products run on one pool
// shared by every model in the process, and a run mixing precisions would match neither figure.
//   F32:  f32 operands, f32 accumulation (the fixtures' tolerances are f32's).
//   BF16: every linear takes bf16 operands (weights rounded to bf16, or used as stored when they are bf16;
//         activations rounded to bf16) with f32 accumulation; so does attention's Q K^T (q and k rounded). Its
//         softmax and P V, the conv GEMM, norms, RoPE and residuals stay f32. Except on CUDA for head dims 64
//         and 128 without a bias: its tensor-core attention also rounds V and the probabilities P to bf16 for
//         P V, as FlashAttention does (cuda/attention.cu).
//   FP8:  every linear quantizes its weight and its activations to e4m3 (core/fp8.h), each with one float32 scale
//         per tensor (amax / 448; the activations' computed at every call), accumulates the e4m3 products in f32
//         and multiplies by scale_w * scale_x; bias and activation as before. Everything else runs as in BF16.
//         On the GPU cuBLASLt's FP8 GEMM (Hopper); the CPU emulates it exactly (the e4m3 values held in floats,
//         an f32 product: slow, the reference the GPU is tested against).
// On a CPU without native bf16 dot products (AVX512_BF16 or AMX) BF16 is emulated for the linears: operands
// rounded to bf16, then an f32 product, which gives the same numbers up to summation order (a product of two
// bf16 values is exact in f32); attention stays f32 there. It is not the default there.
#pragma once
#include <cstdint>
#include <string>

#include "core/error.h"

namespace meshdit {

enum class Precision : uint8_t { F32, BF16, FP8 };

void set_compute_precision(Precision p);
Precision compute_precision();

// BF16 where the CPU has native bf16 dot products and the GEMM a bf16 kernel for them, else F32: the
// default of `generate` and `bench transformer` (`check` always defaults to F32).
Precision default_compute_precision();
// Whether BF16 runs on bf16 hardware rather than emulated.
bool native_bf16();

// Whether attention's Q K^T (and what else BF16 rounds outside the linears) runs in bf16: BF16 and FP8.
inline bool bf16_outside_linears(Precision p) { return p != Precision::F32; }

const char* precision_name(Precision p);  // "f32", "bf16", "fp8"
Result<Precision> parse_precision(const std::string& s);
// "bf16 (native, brg:avx512_core_bf16)", "bf16 (emulated: ...)", "f32": for status lines, info, traces.
std::string precision_description(Precision p);

// Sets a precision for a scope and restores the previous one (tests, the check command).
class ScopedPrecision {
 public:
  explicit ScopedPrecision(Precision p) : prev_(compute_precision()) { set_compute_precision(p); }
  ~ScopedPrecision() { set_compute_precision(prev_); }
  ScopedPrecision(const ScopedPrecision&) = delete;
  ScopedPrecision& operator=(const ScopedPrecision&) = delete;

 private:
  Precision prev_;
};

}  // namespace meshdit
