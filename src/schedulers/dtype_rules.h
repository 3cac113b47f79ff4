// torch's dtype rules where the schedulers' float32 step arithmetic meets model outputs of other dtypes.
#pragma once
#include "core/tensor.h"

namespace meshdit {

// torch's result dtype for (0-dim float32 tensor) * (tensor of dtype `dt`) is `dt`: a float32 product rounded
// to a half dtype (and back to float32, where the rest of the step computes). A float32 or float64 product is
// left as the ops computed it (float32).
inline Tensor round_product_to(const Tensor& v, DType dt) {
  return dt == DType::F32 || dt == DType::F64 ? v : v.to(dt).to(DType::F32);
}

inline bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64;
}

}  // namespace meshdit
