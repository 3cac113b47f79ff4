// The online softmax's two passes over a score row (max, then exp and sum), chosen at run time for the
// CPU at hand: AVX-512 and AVX2/FMA intrinsics in functions compiled for those ISAs whatever the build's
// -march, and the portable loops of vec_math.h (compiled for the build's own flags) as the fallback. A
// binary built without -march=native (MESHDIT_NATIVE=OFF) thus still runs attention's softmax in wide
// vectors; one built with it runs only on CPUs with the build machine's ISA, whatever this file does.
#pragma once
#include <cstdint>
#include <string>

#include "core/error.h"

namespace meshdit::cpu {

enum class SoftmaxIsa : uint8_t { Portable, Avx2, Avx512 };

struct SoftmaxKernels {
  // max(init, x[0..n)), a NaN in x skipped
  float (*max_of)(const float* x, int64_t n, float init);
  // x[i] = exp(x[i] - sub) (0 for x[i] = -inf), returning the sum of the new values
  float (*exp_sub_sum)(float* x, int64_t n, float sub);
};

// The widest of the three that this CPU runs (cpuid).
SoftmaxIsa best_softmax_isa();
// The ISA in use (best_softmax_isa() unless set) and its kernels.
SoftmaxIsa softmax_isa();
const SoftmaxKernels& softmax_kernels();
// Forces an ISA (tests, benchmarks): an error for one this CPU does not run.
Status set_softmax_isa(SoftmaxIsa isa);
std::string softmax_isa_name(SoftmaxIsa isa);

}  // namespace meshdit::cpu
