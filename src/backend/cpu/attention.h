// The CPU backend's attention kernel (flash-style, attention.cpp) and its precision setting.
#pragma once
#include "backend/backend.h"
#include "backend/cpu/gemm.h"
#include "backend/precision.h"
#include "core/error.h"

namespace meshdit::cpu {

// Precision of attention's first product, Q K^T: F32 (the default, the fixtures' tolerances), or BF16 (q and
// k rounded to bf16, f32 accumulation). The softmax, its running max and sum, and P V stay f32 in both (why:
// attention.cpp). Separate from linear_precision() so that a bf16 mode can choose each; BF16 on a machine
// without a bf16 GEMM is an error, not a silent f32 run.
Status set_attention_precision(Precision p);
Precision attention_precision();

void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask,
                          AttentionState& st);
void attention_finalize(const AttentionState& st, Tensor& out);

}  // namespace meshdit::cpu
