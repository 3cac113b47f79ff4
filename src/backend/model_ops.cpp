#include "backend/model_ops.h"

#include <numeric>

#include "backend/ops.h"

namespace meshdit::ops {
namespace {

// A contiguous float32 view or copy of x.
Tensor f32c(const Tensor& x) {
  Tensor f = x.dtype() == DType::F32 ? x : x.to(DType::F32);
  return f.is_contiguous() ? f : f.contiguous();
}

Tensor i64c(const Tensor& x, const char* op) {
  MD_CHECK(x.dtype() == DType::I64, std::string(op) + ": needs int64 ids, got " + dtype_name(x.dtype()));
  return x.is_contiguous() ? x : x.contiguous();
}

}  // namespace

std::pair<Tensor, Tensor> rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta) {
  MD_CHECK(pos.dim() == 2 && pos.size(1) == int64_t(axes_dims.size()),
           "rope_tables: positions " + shape_str(pos.shape()) + " need one column per axis (" +
               std::to_string(axes_dims.size()) + ")");
  for (int d : axes_dims) MD_CHECK(d > 0 && d % 2 == 0, "rope_tables: axis dims must be positive and even");
  const int64_t D = std::accumulate(axes_dims.begin(), axes_dims.end(), int64_t(0));
  Tensor p = f32c(pos);
  Tensor cos = Tensor::empty({pos.size(0), D}, DType::F32, pos.device());
  Tensor sin = Tensor::empty({pos.size(0), D}, DType::F32, pos.device());
  backend_for(pos.device()).rope_tables(p, axes_dims, theta, cos, sin);
  return {cos, sin};
}

void rope_half_(Tensor& x, const Tensor& cos, const Tensor& sin) {
  MD_CHECK(x.dim() == 4 && x.dtype() == DType::F32 && x.is_contiguous() && !x.read_only() && x.size(3) % 2 == 0 &&
               cos.dim() == 2 && cos.size(0) == x.size(1) && cos.size(1) == x.size(3) && cos.shape() == sin.shape(),
           "rope_half_: x " + shape_str(x.shape()) + " cos " + shape_str(cos.shape()));
  backend_for(common_device("rope_half", {&x, &cos, &sin})).rope_half(x, f32c(cos), f32c(sin));
}

namespace {
Tensor moments(const Tensor& sums, double count, double eps, bool rstd) {
  MD_CHECK(count > 0, "moments_from_sums: count must be positive");
  Tensor y = Tensor::empty(sums.shape(), DType::F32, sums.device());
  backend_for(sums.device()).moments_from_sums(f32c(sums), count, eps, rstd, y);
  return y;
}
}  // namespace

Tensor mean_from_sums(const Tensor& sums, double count) { return moments(sums, count, 0.0, false); }
Tensor rstd_from_sums(const Tensor& ssd, double count, double eps) { return moments(ssd, count, eps, true); }

void blend_(const Tensor& a, Tensor& b, int64_t extent, int64_t dim) {
  MD_CHECK(dim == 2 || dim == 3, "blend_: dim must be 2 (rows) or 3 (columns)");
  const int64_t other = dim == 2 ? 3 : 2;
  MD_CHECK(a.dim() == 4 && b.dim() == 4 && a.size(0) == b.size(0) && a.size(1) == b.size(1) &&
               a.size(other) == b.size(other),
           "blend_: tiles " + shape_str(a.shape()) + " and " + shape_str(b.shape()) + " do not share an edge");
  MD_CHECK(b.dtype() == DType::F32 && b.is_contiguous() && !b.read_only(), "blend_: b must be contiguous float32");
  MD_CHECK(extent >= 0, "blend_: negative extent");
  backend_for(common_device("blend", {&a, &b})).blend(f32c(a), b, extent, int(dim));
}

Tensor gather_bias(const Tensor& table, const Tensor& buckets) {
  MD_CHECK(table.dim() == 2 && buckets.dim() == 2, "gather_bias: table " + shape_str(table.shape()) + " / buckets " +
                                                       shape_str(buckets.shape()) + " must be [buckets, H] / [Lq, Lk]");
  Tensor out = Tensor::empty({1, table.size(1), buckets.size(0), buckets.size(1)}, DType::F32, table.device());
  backend_for(common_device("gather_bias", {&table, &buckets}))
      .gather_bias(f32c(table), i64c(buckets, "gather_bias"), out);
  return out;
}

Tensor mask_to_bias(const Tensor& mask) {
  Tensor y = Tensor::empty(mask.shape(), DType::F32, mask.device());
  backend_for(mask.device()).mask_to_bias(f32c(mask), y);
  return y;
}

Tensor argmax_rows(const Tensor& x) {
  MD_CHECK(x.dim() == 2 && x.size(1) > 0, "argmax_rows: x must be [R, L > 0], got " + shape_str(x.shape()));
  Tensor out = Tensor::empty({x.size(0)}, DType::I64, x.device());
  backend_for(x.device()).argmax_rows(i64c(x, "argmax_rows"), out);
  return out;
}

Tensor find_rows(const Tensor& x, int64_t value, int64_t missing) {
  MD_CHECK(x.dim() == 2, "find_rows: x must be [R, L], got " + shape_str(x.shape()));
  Tensor out = Tensor::empty({x.size(0)}, DType::I64, x.device());
  backend_for(x.device()).find_rows(i64c(x, "find_rows"), value, missing, out);
  return out;
}

Tensor gather_rows(const Tensor& x, const Tensor& idx) {
  MD_CHECK(x.dim() == 3 && idx.shape() == Shape{x.size(0)},
           "gather_rows: x " + shape_str(x.shape()) + " / idx " + shape_str(idx.shape()) + " must be [B, L, D] / [B]");
  Tensor out = Tensor::empty({x.size(0), x.size(2)}, DType::F32, x.device());
  backend_for(common_device("gather_rows", {&x, &idx})).gather_rows(f32c(x), i64c(idx, "gather_rows"), out);
  return out;
}

Tensor axpby(float a, const Tensor& x, float b, const Tensor& y) {
  MD_CHECK(x.shape() == y.shape(), "axpby: shapes " + shape_str(x.shape()) + " vs " + shape_str(y.shape()));
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  const Tensor yc = f32c(y);
  backend_for(common_device("axpby", {&x, &y})).axpby(a, f32c(x), b, &yc, out);
  return out;
}

Tensor scale(const Tensor& x, float a) {
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  backend_for(x.device()).axpby(a, f32c(x), 0.0f, nullptr, out);
  return out;
}

Tensor row_std(const Tensor& x) {
  MD_CHECK(x.dim() >= 1 && x.size(0) > 0, "row_std: empty " + shape_str(x.shape()));
  Tensor out = Tensor::empty({x.size(0)}, DType::F32, x.device());
  backend_for(x.device()).row_std(f32c(x), out);
  return out;
}

Tensor row_l2(const Tensor& x) {
  MD_CHECK(x.dim() >= 1 && x.size(0) > 0, "row_l2: empty " + shape_str(x.shape()));
  Tensor out = Tensor::empty({x.size(0)}, DType::F32, x.device());
  backend_for(x.device()).row_l2(f32c(x), out);
  return out;
}

Tensor l1_change_sums(const Tensor& a, const Tensor& b) {
  MD_CHECK(a.shape() == b.shape(), "l1_change_sums: " + shape_str(a.shape()) + " vs " + shape_str(b.shape()));
  Tensor out = Tensor::empty({2}, DType::F32, a.device());
  backend_for(common_device("l1_change_sums", {&a, &b})).l1_change_sums(f32c(a), f32c(b), out);
  return out;
}

std::vector<float> host_values(const Tensor& t) {
  MD_CHECK(t.numel() <= 1024, "host_values: " + shape_str(t.shape()) + " is tensor data, not a decision");
  return to_device(t, Device::CPU).to_vector();
}

Tensor scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den) {
  MD_CHECK(num.shape() == Shape{x.size(0)} && den.shape() == Shape{x.size(0)},
           "scale_rows_by_ratio: num/den must be [" + std::to_string(x.size(0)) + "]");
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  backend_for(common_device("scale_rows_by_ratio", {&x, &num, &den}))
      .scale_rows_by_ratio(f32c(x), f32c(num), f32c(den), y);
  return y;
}

}  // namespace meshdit::ops
