// The tensor-core attention path (attention_tc.cu), which attention.cu's attention_accumulate hands the calls
// it takes: bf16 precision, head dim 64 or 128, no bias (causal order allowed).
#pragma once
#include "backend/backend.h"
#include "core/tensor.h"

namespace meshdit::cuda {

bool attention_tc_applies(const Tensor& q, const AttentionMask* mask);
// attention_accumulate's contract (backend.h) on tensor cores; q, k, v float32 with D contiguous, the state
// contiguous float32, and every size non-zero (attention_accumulate checks these).
void attention_accumulate_tc(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                             AttentionState& st);

}  // namespace meshdit::cuda
