// CPU kernels for model code (the "kernels for model code" block of Backend): the small computations
// models, encoders and schedulers used to do in host loops over tensor memory. cpu_backend() puts them in
// its table; nothing else calls them directly. axpby lives in model_kernels_exact.cpp, compiled without
// floating-point contraction.
#pragma once
#include "backend/backend.h"

namespace meshdit::cpu {

void rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta, Tensor& cos, Tensor& sin);
void moments_from_sums(const Tensor& sums, double count, double eps, bool rstd, Tensor& y);
void blend(const Tensor& a, Tensor& b, int64_t extent, int dim);
void gather_bias(const Tensor& table, const Tensor& buckets, Tensor& out);
void mask_to_bias(const Tensor& mask, Tensor& y);
void argmax_rows(const Tensor& x, Tensor& out);
void find_rows(const Tensor& x, int64_t value, int64_t missing, Tensor& out);
void gather_rows(const Tensor& x, const Tensor& idx, Tensor& out);
void axpby(float a, const Tensor& x, float b, const Tensor* y, Tensor& out);
void row_std(const Tensor& x, Tensor& out);
void row_l2(const Tensor& x, Tensor& out);
void l1_change_sums(const Tensor& a, const Tensor& b, Tensor& out);
void scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den, Tensor& y);
void rope_half(Tensor& x, const Tensor& cos, const Tensor& sin);

}  // namespace meshdit::cpu
