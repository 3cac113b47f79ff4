// Integer dot products of block-quantized weights (Q8_0, Q4_K) with activations quantized to 8 bits, as ggml
// computes them: x is cut into blocks of 32 values, each block scaled to int8 (d = max |x| / 127), and a weight
// block's integers meet the activation block's in one instruction (VPDPBUSD on AVX512-VNNI or AVX-VNNI,
// VPMADDUBSW + VPMADDWD on AVX2), with the two float scales applied once per block.
//
// The linear kernel uses them for the products with few rows of x (the adaptive norms' one-row projections),
// under bf16 precision: there each weight byte is read once and decoding it to floats first cost 2.7x the time
// of a bf16 weight (bench/README.md, "GGUF weights kept quantized"). Products with many rows decode a weight
// tile to bf16 once and run the bf16 GEMM instead: on a CPU with bf16 dot products that is the faster of the
// two, since an integer block of 32 needs a convert and a scale per block besides the dot product.
#pragma once
#include <cstdint>
#include <string>

#include "backend/cpu/quant.h"
#include "core/error.h"

namespace meshdit::cpu {

// Blocks of 32 values: a row of K values (K a multiple of 32) is K / 32 scales and K int8 values.
constexpr int64_t kQ8Block = 32;

// Quantizes a row of activations (ggml's quantize_row_q8_0 rounding: d = amax / 127, q = round(x / d)); also
// writes each block's sum of q (Q4_K's minimums multiply it).
void quantize_row_q8(const float* x, int64_t K, int8_t* q, float* d, int32_t* sums);

// Whether the integer dot products take weights of type t.
bool quant_dot_supported(QuantType t);

enum class QuantDotIsa : uint8_t { Portable, Avx2, AvxVnni, Avx512Vnni };
QuantDotIsa best_quant_dot_isa();
QuantDotIsa quant_dot_isa();                // best_quant_dot_isa() unless set
Status set_quant_dot_isa(QuantDotIsa isa);  // tests, benchmarks: an error for one this CPU does not run
std::string quant_dot_isa_name(QuantDotIsa isa);

// out[m] = dot(weight row w (K values of type t), activation row m), for m < M: q + m * K and d / sums + m * K / 32.
void quant_dot_rows(QuantType t, const uint8_t* w, int64_t K, const int8_t* q, const float* d, const int32_t* sums,
                    int64_t M, float* out);

}  // namespace meshdit::cpu
