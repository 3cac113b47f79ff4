// Matrix products through cuBLASLt, for linear (linear.cu) and the convolution (conv.cu).
//
// cuBLASLt is loaded with dlopen the first time a product runs, not linked: the library is half a gigabyte,
// and linking it cost every process of the test suite ~0.4 s at start (seconds when cold) on machines that
// have the toolkit but no GPU, where it is never called.
#pragma once
#include <library_types.h>

#include <cstddef>
#include <cstdint>

namespace meshdit::cuda {

struct GemmOperand {
  const void* data;
  cudaDataType_t type;  // CUDA_R_32F, CUDA_R_16BF, CUDA_R_16F, CUDA_R_8F_E4M3
  int64_t ld;           // leading dimension (column-major)
  bool transposed;      // op(X) = X^T
  // E4M3: a device pointer to the float that dequantises the operand (its values times it are the real ones),
  // given to cuBLASLt as the A / B scale; null otherwise.
  const float* scale = nullptr;
};

// Column-major D [m, n] (float32, leading dimension ldd) = op(A) [m, k] . op(B) [k, n], plus bias[m] added to
// every column when given, then max(0, .) when relu. Float32 accumulation; a float32 product is a true
// float32 one (no TF32: the fixtures' tolerances are float32's). Returns false when cuBLASLt has no algorithm
// for this combination (the caller then drops the epilogue), aborts on any other cuBLASLt error. E4M3 operands
// (both, A transposed and B not: cuBLASLt's FP8 "TN" rule) multiply D by both scales; any heuristic error then
// counts as "no algorithm" (FP8's rules on shapes, alignment and epilogues vary with the GPU and the library).
bool gemm(int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b, float* d, int64_t ldd,
          const float* bias, bool relu);

}  // namespace meshdit::cuda

namespace meshdit::cuda {

// The caching allocator (memory.cu) calls this for every block given back, before it can be handed out again:
// linear's FP8 copies of weights in [p, p + bytes) are dropped, so a weight freed and another allocated at the
// same address never reads a stale copy.
void fp8_forget_weights(const void* p, size_t bytes);

}  // namespace meshdit::cuda
