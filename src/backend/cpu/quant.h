// ggml's block-quantized weight formats, as GGUF files store them (llama.cpp, stable-diffusion.cpp and
// city96's ComfyUI-GGUF all write these): a row of n values is n / block_size blocks of block_bytes each,
// laid out exactly as ggml's block_q* structs (little-endian, fp16 scales). meshdit computes in float, so a
// quantized weight is dequantized once, when it is loaded; nothing here runs per step.
//
// The encoders exist for `meshdit convert --type` and for the tests: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 round
// as ggml's reference quantizers do (so a file meshdit writes matches llama.cpp's bit for bit for those), the
// K types use a plain per-sub-block scale/min fit with round-to-nearest (ggml's importance-weighted search is
// slower and only somewhat more accurate; a reader cannot tell the difference).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace meshdit {

// ggml's type ids (the numbers GGUF stores); the gaps are ids meshdit does not read (removed Q4_2/Q4_3,
// Q8_1, the IQ and ternary types).
enum class QuantType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// Whether meshdit knows ggml type `id` (one of the ids above).
bool quant_type_known(uint32_t id);
// "Q4_K", "BF16", ...; for an id meshdit does not know, ggml's name when there is one ("IQ2_XXS"), else "?".
const char* quant_type_name(uint32_t id);
inline const char* quant_type_name(QuantType t) { return quant_type_name(uint32_t(t)); }
// From a name in any case ("q8_0", "Q4_K", "q4_k_m" is not one); false when unknown.
bool quant_type_from_name(const std::string& name, QuantType* out);

// Elements per block (1 for the plain types) and bytes per block (the element size for the plain types).
int64_t quant_block_size(QuantType t);
size_t quant_block_bytes(QuantType t);
// A block type (Q*), as opposed to a plain one (F32, F16, BF16, I*, F64).
bool quant_is_block(QuantType t);
// Bytes of n elements; n must be a multiple of the block size.
uint64_t quant_row_bytes(QuantType t, int64_t n);

// Dequantizes n values (a multiple of the block size) of a float or block type to float. Integer types are
// not weights: the caller rejects them first.
void dequantize_row(QuantType t, const void* src, float* dst, int64_t n);
// Quantizes n values (a multiple of the block size) to a float or block type (Q8_K with its bsums filled in).
void quantize_row(QuantType t, const float* src, void* dst, int64_t n);

}  // namespace meshdit
