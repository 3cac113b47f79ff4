// CPU element-wise kernels over contiguous float32 tensors: the small operations pipelines and schedulers
// need between the big kernels (CFG combine, latent scaling, clamps, fills). cpu_backend() puts them in its
// table; nothing else calls them directly.
#pragma once
#include "backend/backend.h"

namespace meshdit::cpu {

void fill(Tensor& y, float value);
void affine(const Tensor& x, float a, float b, Tensor& y);
void lerp(const Tensor& a, const Tensor& b, float w, Tensor& y);
void clamp(Tensor& x, float lo, float hi);
void mul(const Tensor& a, const Tensor& b, Tensor& y);
void div_add(const Tensor& x, float d, float b, Tensor& y);
void add_broadcast(const Tensor& a, const Tensor& b, Tensor& y);

}  // namespace meshdit::cpu
