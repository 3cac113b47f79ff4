// The CPU backend's one matrix product: linear, attention and the conv im2col product all call gemm(),
// and nothing else in the backend names a BLAS. It runs oneDNN's matmul primitive, which picks its
// kernels for the CPU it finds at run time (AVX2, AVX-512, AVX512_BF16, AMX), single-threaded on the
// calling thread: parallelism comes from our pool handing out tiles (bench/README.md has the figures
// behind that choice). Primitives are built once per shape and thread, then reused.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace meshdit::cpu {

// A row-major matrix as stored, with its leading dimension; trans: the operand is the transpose of
// what is stored (for B = W^T with W [N, K] as checkpoints store weights, pass W with trans = true).
struct GemmOperand {
  const void* data;
  DType dtype;  // F32, or BF16 for the bf16 path
  int64_t ld;
  bool trans;
};

// C[M, N] = alpha * op(A)[M, K] . op(B)[K, N] + beta * C[M, N], C float32 with leading dimension ldc.
// Both operands F32: the f32 path. Both BF16: the bf16 path (products of bf16 values accumulated in f32,
// what ggml does for bf16 weights; the caller rounds f32 activations with to_bf16 first). Where
// bf16_gemm_available() is false the bf16 operands are widened and the f32 kernel runs: a product of two
// bf16 values is exact in f32, so only the summation order differs. Mixed dtypes are programming errors.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& a, const GemmOperand& b, float beta,
          float* c, int64_t ldc);

// Rounds n floats to bfloat16 (nearest even), the activations' side of the bf16 path.
void to_bf16(const float* src, int64_t n, uint16_t* dst);

// What the products run on, for `meshdit info`, --timings and traces.
struct GemmKernelInfo {
  std::string library;    // "oneDNN 2.6.3 (OpenMP runtime)"
  std::string isa;        // oneDNN's effective ISA: "avx512_core_bf16", "avx2", ...
  std::string f32_impl;   // the f32 matmul implementation on a Linear-sized shape: "brg:avx512_core"
  std::string bf16_impl;  // the same for bf16, empty when unavailable
  bool bf16_available = false;
};
const GemmKernelInfo& gemm_kernel_info();
// One line: "oneDNN 2.6.3, isa avx512_core_bf16, f32 brg:avx512_core, bf16 brg:avx512_core_bf16".
std::string gemm_kernel_line();
bool bf16_gemm_available();

// An error when the GEMM would run below what this CPU supports (oneDNN capped by DNNL_MAX_CPU_ISA, a
// reference implementation chosen, a bf16 CPU without a bf16 kernel): the check that makes a slow
// fallback visible instead of silent.
Status check_gemm_dispatch();

}  // namespace meshdit::cpu
