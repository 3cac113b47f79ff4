// Tensor views, copies and dtype conversions, checked against naive references written here: element
// reads through (offset, strides) by hand, and float -> bf16/f16 rounding computed from the exact values of
// the candidate encodings (round to nearest, ties to even), independent of the library's bit tricks.
#include "core/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "../test_util.h"
#include "core/allocator.h"
#include "core/dtype.h"

using namespace meshdit;

namespace {

// ---- naive helpers -----------------------------------------------------------------------------------

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Exact value of a binary16 encoding, from its definition.
double ref_f16_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0)
    v = std::ldexp(double(man), -24);
  else if (exp == 31)
    v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(double(1024 + man), exp - 25);
  return sign ? -v : v;
}

double ref_bf16_value(uint16_t h) { return double(bits_float(uint32_t(h) << 16)); }

// Nearest bf16 (ties to even), overflow to inf; NaN is reported as 0x7fc0 (the caller checks NaN-ness only).
uint16_t ref_f32_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u, mag = u & 0x7fffffffu;
  const uint32_t lo = mag & 0xffff0000u, hi = lo + 0x10000u;
  if (lo == mag) return uint16_t((sign | lo) >> 16);
  const double x = std::fabs(double(f));
  const double vlo = double(bits_float(lo));
  const double vhi = hi >= 0x7f800000u ? std::ldexp(1.0, 128) : double(bits_float(hi));
  const double dlo = x - vlo, dhi = vhi - x;
  uint32_t pick;
  if (dlo < dhi)
    pick = lo;
  else if (dhi < dlo)
    pick = hi;
  else
    pick = ((lo >> 16) & 1u) ? hi : lo;
  return uint16_t((sign | pick) >> 16);
}

// Nearest binary16 (ties to even), overflow to inf, underflow through the subnormals to (signed) zero.
uint16_t ref_f32_to_f16(float f) {
  if (std::isnan(f)) return 0x7e00;
  static const std::vector<double> table = [] {
    std::vector<double> t(0x7c01);
    for (uint32_t h = 0; h < 0x7c00; ++h) t[h] = ref_f16_value(uint16_t(h));
    t[0x7c00] = 65536.0;  // the value inf stands for when rounding with an unbounded exponent
    return t;
  }();
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double x = std::fabs(double(f));
  if (x >= 65536.0) return sign | 0x7c00;
  // largest h with table[h] <= x
  const size_t h = size_t(std::upper_bound(table.begin(), table.end(), x) - table.begin()) - 1;
  if (table[h] == x) return uint16_t(sign | h);
  const double dlo = x - table[h], dhi = table[h + 1] - x;
  size_t pick;
  if (dlo < dhi)
    pick = h;
  else if (dhi < dlo)
    pick = h + 1;
  else
    pick = (h & 1) ? h + 1 : h;
  return uint16_t(sign | pick);
}

// Reads element idx of t through its strides (the raw pointer already includes the view's offset).
double ref_get(const Tensor& t, const std::vector<int64_t>& idx) {
  int64_t off = 0;
  for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.strides()[d];
  const char* p = static_cast<const char*>(t.raw());
  switch (t.dtype()) {
    case DType::F32:
      return double(reinterpret_cast<const float*>(p)[off]);
    case DType::BF16:
      return ref_bf16_value(reinterpret_cast<const uint16_t*>(p)[off]);
    case DType::F16:
      return ref_f16_value(reinterpret_cast<const uint16_t*>(p)[off]);
    default:
      ADD_FAILURE() << "ref_get: unexpected dtype";
      return 0;
  }
}

void for_each_index(const Shape& shape, const std::function<void(const std::vector<int64_t>&)>& fn) {
  if (shape_numel(shape) == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  for (;;) {
    fn(idx);
    int64_t d = int64_t(shape.size()) - 1;
    for (; d >= 0; --d) {
      if (++idx[size_t(d)] < shape[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
    if (d < 0) return;
  }
}

// 0, 1, 2, ... in row-major order.
Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i);
  return t;
}

// Row-major flat index of idx in shape.
int64_t flat(const Shape& shape, const std::vector<int64_t>& idx) {
  int64_t f = 0;
  for (size_t d = 0; d < shape.size(); ++d) f = f * shape[d] + idx[d];
  return f;
}

// Checks every element of view against expect(idx).
void expect_view(const Tensor& view, const std::function<double(const std::vector<int64_t>&)>& expect) {
  int bad = 0;
  for_each_index(view.shape(), [&](const std::vector<int64_t>& idx) {
    const double got = ref_get(view, idx), want = expect(idx);
    if (got != want && bad++ < 5) ADD_FAILURE() << "element " << shape_str(idx) << ": got " << got << " want " << want;
  });
  EXPECT_EQ(bad, 0);
}

// ---- views ---------------------------------------------------------------------------------------

TEST(TensorBasics, EmptyZerosFromF32) {
  Tensor e = Tensor::empty({2, 3, 4});
  EXPECT_EQ(e.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(e.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(e.numel(), 24);
  EXPECT_EQ(e.nbytes(), 96u);
  EXPECT_TRUE(e.is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(e.raw()) % 64, 0u);

  Tensor z = Tensor::zeros({5, 7}, DType::BF16);
  EXPECT_EQ(z.dtype(), DType::BF16);
  EXPECT_EQ(z.nbytes(), 70u);
  for (int64_t i = 0; i < z.numel(); ++i) EXPECT_EQ(z.data<uint16_t>()[i], 0);

  Tensor f = Tensor::from_f32({2, 2}, {1.5f, -2.0f, 3.25f, 0.0f});
  EXPECT_EQ(f.to_vector(), (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}));

  Tensor empty0 = Tensor::empty({3, 0});
  EXPECT_EQ(empty0.numel(), 0);
  EXPECT_TRUE(empty0.clone().to_vector().empty());
}

TEST(TensorViews, ReshapeSharesStorageAndInfers) {
  const Shape s{2, 3, 4};
  Tensor t = iota(s);
  Tensor r = t.reshape({4, -1});
  EXPECT_EQ(r.shape(), (Shape{4, 6}));
  EXPECT_EQ(r.strides(), (Shape{6, 1}));
  expect_view(r, [&](const auto& idx) { return double(idx[0] * 6 + idx[1]); });
  r.f32()[7] = -1.0f;  // element (1, 1) of r is element 7 of t
  EXPECT_EQ(t.f32()[7], -1.0f);
  EXPECT_EQ(t.reshape({24}).shape(), (Shape{24}));
  EXPECT_EQ(t.reshape({-1, 2, 2}).shape(), (Shape{6, 2, 2}));
  // A reshape of a contiguous slice keeps the slice's offset.
  Tensor rows = iota({6, 4}).slice(0, 2, 5);
  ASSERT_TRUE(rows.is_contiguous());
  expect_view(rows.reshape({3, 2, 2}), [&](const auto& idx) { return double(8 + idx[0] * 4 + idx[1] * 2 + idx[2]); });
}

TEST(TensorViews, Slice) {
  const Shape s{4, 5, 6};
  Tensor t = iota(s);
  Tensor a = t.slice(1, 1, 4);
  EXPECT_EQ(a.shape(), (Shape{4, 3, 6}));
  EXPECT_EQ(a.strides(), t.strides());
  EXPECT_FALSE(a.is_contiguous());
  expect_view(a, [&](const auto& i) { return double(flat(s, {i[0], i[1] + 1, i[2]})); });
  Tensor b = t.slice(-1, 2, 5);
  EXPECT_EQ(b.shape(), (Shape{4, 5, 3}));
  expect_view(b, [&](const auto& i) { return double(flat(s, {i[0], i[1], i[2] + 2})); });
  // Nested slices compose offsets.
  Tensor c = t.slice(0, 1, 3).slice(2, 1, 6).slice(1, 2, 3);
  EXPECT_EQ(c.shape(), (Shape{2, 1, 5}));
  expect_view(c, [&](const auto& i) { return double(flat(s, {i[0] + 1, i[1] + 2, i[2] + 1})); });
  // An outer-dim slice is contiguous; an empty slice has no elements.
  EXPECT_TRUE(t.slice(0, 1, 3).is_contiguous());
  EXPECT_EQ(t.slice(1, 2, 2).numel(), 0);
  // Writes through a view land in the parent.
  b.data<float>()[0] = 1000.0f;
  EXPECT_EQ(t.f32()[2], 1000.0f);
}

TEST(TensorViews, Select) {
  const Shape s{3, 4, 5};
  Tensor t = iota(s);
  Tensor a = t.select(0, 2);
  EXPECT_EQ(a.shape(), (Shape{4, 5}));
  EXPECT_TRUE(a.is_contiguous());
  expect_view(a, [&](const auto& i) { return double(flat(s, {2, i[0], i[1]})); });
  Tensor b = t.select(-1, 3);
  EXPECT_EQ(b.shape(), (Shape{3, 4}));
  EXPECT_EQ(b.strides(), (Shape{20, 5}));
  expect_view(b, [&](const auto& i) { return double(flat(s, {i[0], i[1], 3})); });
  Tensor c = t.select(1, 1).select(0, 2);
  EXPECT_EQ(c.shape(), (Shape{5}));
  expect_view(c, [&](const auto& i) { return double(flat(s, {2, 1, i[0]})); });
}

TEST(TensorViews, Permute) {
  const Shape s{2, 3, 4};
  Tensor t = iota(s);
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  EXPECT_FALSE(p.is_contiguous());
  expect_view(p, [&](const auto& i) { return double(flat(s, {i[1], i[2], i[0]})); });
  // Permuting back is the identity view.
  Tensor q = p.permute({1, 2, 0});
  EXPECT_EQ(q.shape(), s);
  EXPECT_TRUE(q.is_contiguous());
  expect_view(q, [&](const auto& i) { return double(flat(s, i)); });
  // Transpose of a slice.
  Tensor r = t.slice(2, 1, 3).permute({0, 2, 1});
  EXPECT_EQ(r.shape(), (Shape{2, 2, 3}));
  expect_view(r, [&](const auto& i) { return double(flat(s, {i[0], i[2], i[1] + 1})); });
}

TEST(TensorViews, Unsqueeze) {
  const Shape s{3, 4};
  Tensor t = iota(s);
  Tensor a = t.unsqueeze(0), b = t.unsqueeze(1), c = t.unsqueeze(-1), d = t.unsqueeze(2);
  EXPECT_EQ(a.shape(), (Shape{1, 3, 4}));
  EXPECT_EQ(b.shape(), (Shape{3, 1, 4}));
  EXPECT_EQ(c.shape(), (Shape{3, 4, 1}));
  EXPECT_EQ(d.shape(), (Shape{3, 4, 1}));
  for (const Tensor* v : {&a, &b, &c, &d}) {
    EXPECT_TRUE(v->is_contiguous());
    EXPECT_EQ(v->to_vector(), t.to_vector());
  }
  expect_view(b, [&](const auto& i) { return double(flat(s, {i[0], i[2]})); });
  EXPECT_EQ(b.reshape({12}).to_vector(), t.to_vector());
  // Unsqueeze of a strided view keeps the other strides.
  Tensor v = t.slice(1, 1, 3).unsqueeze(1);
  EXPECT_EQ(v.shape(), (Shape{3, 1, 2}));
  EXPECT_EQ(v.stride(0), 4);
  EXPECT_EQ(v.stride(2), 1);
  expect_view(v, [&](const auto& i) { return double(flat(s, {i[0], i[2] + 1})); });
}

TEST(TensorViews, Chunk) {
  const Shape s{2, 12};
  Tensor t = iota(s);
  auto parts = t.chunk(3, 1);
  ASSERT_EQ(parts.size(), 3u);
  for (int64_t k = 0; k < 3; ++k) {
    EXPECT_EQ(parts[size_t(k)].shape(), (Shape{2, 4}));
    EXPECT_EQ(parts[size_t(k)].strides(), (Shape{12, 1}));
    expect_view(parts[size_t(k)], [&](const auto& i) { return double(flat(s, {i[0], 4 * k + i[1]})); });
  }
  auto rows = t.chunk(2, 0);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[1].is_contiguous());
  expect_view(rows[1], [&](const auto& i) { return double(flat(s, {1, i[1]})); });
  auto last = iota({3, 2, 6}).chunk(6, -1);
  ASSERT_EQ(last.size(), 6u);
  EXPECT_EQ(last[5].shape(), (Shape{3, 2, 1}));
  expect_view(last[5], [&](const auto& i) { return double(flat({3, 2, 6}, {i[0], i[1], 5})); });
}

// ---- copies --------------------------------------------------------------------------------------

TEST(TensorCopies, ContiguousAndClone) {
  const Shape s{3, 4, 5};
  Tensor t = iota(s);
  // contiguous() of a contiguous tensor is the same storage; clone() never is.
  EXPECT_EQ(t.contiguous().raw(), t.raw());
  Tensor cl = t.clone();
  EXPECT_NE(cl.raw(), t.raw());
  EXPECT_EQ(cl.to_vector(), t.to_vector());
  cl.f32()[0] = 99.0f;
  EXPECT_EQ(t.f32()[0], 0.0f);

  Tensor v = t.permute({2, 0, 1}).slice(1, 1, 3);  // [5, 2, 4], strided
  Tensor c = v.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.shape(), (Shape{5, 2, 4}));
  EXPECT_EQ(c.strides(), contiguous_strides({5, 2, 4}));
  expect_view(c, [&](const auto& i) { return double(flat(s, {i[1] + 1, i[2], i[0]})); });
  Tensor vc = v.clone();
  EXPECT_TRUE(vc.is_contiguous());
  EXPECT_EQ(vc.to_vector(), c.to_vector());
  // to_vector of a view is in logical order.
  std::vector<float> lv = v.to_vector();
  int64_t n = 0;
  for_each_index(v.shape(), [&](const auto& i) { EXPECT_EQ(double(lv[size_t(n++)]), ref_get(v, i)); });

  // clone of a bf16 strided view keeps the dtype and bits.
  Tensor b = t.to(DType::BF16).slice(2, 1, 4);
  Tensor bc = b.clone();
  EXPECT_EQ(bc.dtype(), DType::BF16);
  expect_view(bc, [&](const auto& i) { return ref_get(b, i); });
}

TEST(TensorCopies, CopyIntoStridedSrcAndDst) {
  // src: a transposed slice; dst: a strided window into a larger buffer whose other elements must stay.
  const Shape s{6, 7};
  Tensor src_base = iota(s);
  Tensor src = src_base.slice(0, 1, 5).permute({1, 0});  // [7, 4]
  Tensor big = Tensor::empty({9, 10});
  for (int64_t i = 0; i < big.numel(); ++i) big.f32()[i] = -1.0f - float(i);
  Tensor dst = big.slice(0, 1, 8).slice(1, 3, 7);  // [7, 4], row stride 10
  copy_into(src, dst);
  for_each_index(big.shape(), [&](const auto& i) {
    const bool inside = i[0] >= 1 && i[0] < 8 && i[1] >= 3 && i[1] < 7;
    const double want = inside ? double(flat(s, {i[1] - 3 + 1, i[0] - 1})) : -1.0 - double(flat({9, 10}, i));
    EXPECT_EQ(ref_get(big, i), want) << shape_str(i);
  });

  // dst itself transposed (last-dim stride != 1), 3-D, with a dtype change to bf16.
  Tensor src3 = iota({2, 3, 4});
  Tensor buf = Tensor::zeros({4, 3, 2}, DType::BF16);
  Tensor dst3 = buf.permute({2, 1, 0});  // [2, 3, 4], strides {1, 2, 6}
  copy_into(src3, dst3);
  for_each_index(src3.shape(), [&](const auto& i) { EXPECT_EQ(ref_get(buf, {i[2], i[1], i[0]}), ref_get(src3, i)); });

  // strided f16 src into strided f32 dst.
  Tensor h = iota({5, 6}).to(DType::F16).slice(1, 1, 5);  // [5, 4]
  Tensor out = Tensor::zeros({4, 5});
  Tensor out_t = out.permute({1, 0});
  copy_into(h, out_t);
  for_each_index(h.shape(), [&](const auto& i) { EXPECT_EQ(ref_get(out, {i[1], i[0]}), double(i[0] * 6 + i[1] + 1)); });

  // A zero-dim (scalar) tensor made by selecting every dim.
  Tensor sc = iota({2, 3}).select(0, 1).select(0, 2);
  EXPECT_EQ(sc.dim(), 0);
  Tensor sd = Tensor::zeros({4}).select(0, 3);
  copy_into(sc, sd);
  EXPECT_EQ(ref_get(sd, {}), 5.0);
}

TEST(TensorCopies, Concat) {
  Tensor a = iota({2, 3, 4});
  Tensor b = test::random_tensor({2, 5, 4}, 11);
  Tensor c = test::random_tensor({2, 1, 4}, 12);
  Tensor cat1 = concat({a, b, c}, 1);
  EXPECT_EQ(cat1.shape(), (Shape{2, 9, 4}));
  EXPECT_TRUE(cat1.is_contiguous());
  expect_view(cat1, [&](const auto& i) {
    if (i[1] < 3) return ref_get(a, i);
    if (i[1] < 8) return ref_get(b, {i[0], i[1] - 3, i[2]});
    return ref_get(c, {i[0], i[1] - 8, i[2]});
  });
  // Strided parts along the last (negative) dim.
  Tensor p = iota({3, 8}).slice(1, 2, 5);   // [3, 3]
  Tensor q = iota({2, 3}).permute({1, 0});  // [3, 2]
  Tensor cat2 = concat({p, q}, -1);
  EXPECT_EQ(cat2.shape(), (Shape{3, 5}));
  expect_view(cat2,
              [&](const auto& i) { return i[1] < 3 ? double(i[0] * 8 + i[1] + 2) : double((i[1] - 3) * 3 + i[0]); });
  // Along dim 0, and a single part.
  Tensor cat0 = concat({a, a.slice(0, 1, 2)}, 0);
  EXPECT_EQ(cat0.shape(), (Shape{3, 3, 4}));
  expect_view(cat0, [&](const auto& i) { return ref_get(a, {i[0] == 2 ? 1 : i[0], i[1], i[2]}); });
  EXPECT_EQ(concat({b}, 1).to_vector(), b.to_vector());
  // The output takes the first part's dtype; later parts are converted.
  Tensor mixed = concat({a.to(DType::BF16), b}, 1);
  EXPECT_EQ(mixed.dtype(), DType::BF16);
  expect_view(mixed, [&](const auto& i) {
    return i[1] < 3 ? ref_get(a, i) : ref_bf16_value(ref_f32_to_bf16(float(ref_get(b, {i[0], i[1] - 3, i[2]}))));
  });
}

// ---- dtype conversions -----------------------------------------------------------------------------

TEST(Dtype, DecodeF16AllBitPatterns) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float got = f16_to_f32(uint16_t(h));
    const double want = ref_f16_value(uint16_t(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(double(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), bool(h & 0x8000)) << std::hex << h;
    }
  }
}

std::vector<float> bf16_samples() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          3.14159265f,
                          1e-3f,
                          65504.0f,
                          1e30f,
                          -1e-30f,
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          bits_float(0x7f7f8000u),  // a tie whose even neighbour is inf
                          bits_float(0x7f7effffu),
                          bits_float(0x00008000u),
                          bits_float(0x80018000u)};
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 20000; ++i) {
    const uint32_t hi = any(rng) & 0xffff0000u;
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) v.push_back(bits_float(hi | lo));
  }
  for (int i = 0; i < 100000; ++i) v.push_back(bits_float(any(rng)));
  std::erase_if(v, [](float f) { return std::isnan(f); });
  return v;
}

TEST(Dtype, F32ToBF16RoundsToNearestEven) {
  // Hand-checked ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1); 1 + 3*2^-8 -> 1 + 2^-6.
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(f32_to_bf16(-(1.0f + 3 * 0x1p-8f)), 0xbf82);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-23f), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to inf as torch does
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_float(0x7f800001u)))));  // a NaN whose top bits look like inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_float(0xffc00001u)))));

  const std::vector<float> v = bf16_samples();
  int bad = 0;
  for (float f : v) {
    const uint16_t got = f32_to_bf16(f), want = ref_f32_to_bf16(f);
    if (got != want && bad++ < 10)
      ADD_FAILURE() << std::hexfloat << f << ": got " << std::hex << got << " want " << want;
  }
  EXPECT_EQ(bad, 0);

  // Through Tensor::to, strided, and back (decoding is exact).
  Tensor t = Tensor::from_f32({int64_t(v.size())}, v);
  Tensor b = t.to(DType::BF16);
  ASSERT_EQ(b.dtype(), DType::BF16);
  const uint16_t* bp = b.data<uint16_t>();
  bad = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (bp[i] != ref_f32_to_bf16(v[i]) && bad++ < 10) ADD_FAILURE() << "Tensor::to(BF16) element " << i;
  EXPECT_EQ(bad, 0);
  std::vector<float> back = b.to(DType::F32).to_vector();
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(float_bits(back[i]), uint32_t(bp[i]) << 16) << i;

  Tensor m = Tensor::from_f32(
      {4, 3}, {1.0f + 0x1p-8f, 2.0f, 3.0f, -7.0f, 1.0f + 3 * 0x1p-8f, 0.1f, 0.2f, 0.3f, 1e-40f, -1e20f, 5.5f, 6.5f});
  Tensor mb = m.permute({1, 0}).to(DType::BF16);  // strided source
  EXPECT_EQ(mb.shape(), (Shape{3, 4}));
  for_each_index(mb.shape(), [&](const auto& i) {
    EXPECT_EQ(ref_get(mb, i), ref_bf16_value(ref_f32_to_bf16(float(ref_get(m, {i[1], i[0]})))));
  });
}

TEST(Dtype, F32ToF16RoundsSubnormalsInfOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  // Hand-checked values.
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie above the largest finite value rounds to inf
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);
  EXPECT_EQ(f32_to_f16(inf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-inf), 0xfc00);
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);  // tie between 0 and 2^-24 -> even (0)
  EXPECT_EQ(f32_to_f16(-0x1p-25f), 0x8000);
  EXPECT_EQ(f32_to_f16(0x1.000002p-25f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);  // tie between 1 and 2 subnormal units -> even (2)
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);      // smallest normal
  EXPECT_EQ(f32_to_f16(0x1.ffcp-15f), 0x0400);  // largest subnormal + half a unit: tie -> even, the smallest normal
  EXPECT_EQ(f32_to_f16(1e-10f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);      // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie -> even
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(bits_float(0x7f800001u)))));

  // Every f16 value, every midpoint between neighbours (exact in f32), and one f32 ulp either side.
  std::vector<float> v;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float a = float(ref_f16_value(uint16_t(h)));
    const float b = h + 1 < 0x7c00 ? float(ref_f16_value(uint16_t(h + 1))) : 65536.0f;
    const float mid = float((double(a) + double(b)) / 2);
    for (float f : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, inf)}) {
      v.push_back(f);
      v.push_back(-f);
    }
  }
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> any;
  std::uniform_real_distribution<float> expo(-30.0f, 18.0f);
  for (int i = 0; i < 100000; ++i) v.push_back(bits_float(any(rng)));
  for (int i = 0; i < 100000; ++i) v.push_back((i & 1 ? -1.0f : 1.0f) * std::exp2(expo(rng)));
  for (float f : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                  std::numeric_limits<float>::min()})
    v.push_back(f);
  std::erase_if(v, [](float f) { return std::isnan(f); });

  int bad = 0;
  for (float f : v) {
    const uint16_t got = f32_to_f16(f), want = ref_f32_to_f16(f);
    if (got != want && bad++ < 10)
      ADD_FAILURE() << std::hexfloat << f << ": got " << std::hex << got << " want " << want;
  }
  EXPECT_EQ(bad, 0);

  // Through Tensor::to and back.
  Tensor t = Tensor::from_f32({int64_t(v.size())}, v);
  Tensor h = t.to(DType::F16);
  ASSERT_EQ(h.dtype(), DType::F16);
  const uint16_t* hp = h.data<uint16_t>();
  bad = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (hp[i] != ref_f32_to_f16(v[i]) && bad++ < 10) ADD_FAILURE() << "Tensor::to(F16) element " << i;
  EXPECT_EQ(bad, 0);
  std::vector<float> back = h.to(DType::F32).to_vector();
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(double(back[i]), ref_f16_value(hp[i])) << i;
}

TEST(Dtype, BF16AndF16CrossConversions) {
  // bf16 -> f16 rounds the (exactly widened) bf16 value; f16 -> bf16 likewise.
  std::vector<uint16_t> all(0x10000);
  for (uint32_t i = 0; i < 0x10000; ++i) all[i] = uint16_t(i);
  Tensor b = Tensor::empty({256, 256}, DType::BF16);
  std::memcpy(b.raw(), all.data(), all.size() * 2);
  Tensor h = Tensor::empty({256, 256}, DType::F16);
  std::memcpy(h.raw(), all.data(), all.size() * 2);

  Tensor b2h = b.to(DType::F16), h2b = h.to(DType::BF16);
  for (uint32_t i = 0; i < 0x10000; ++i) {
    const float bv = float(ref_bf16_value(uint16_t(i)));
    const uint16_t got = b2h.data<uint16_t>()[i];
    if (std::isnan(bv))
      EXPECT_TRUE(std::isnan(ref_f16_value(got))) << std::hex << i;
    else
      ASSERT_EQ(got, ref_f32_to_f16(bv)) << std::hex << i;
    const double hv = ref_f16_value(uint16_t(i));
    const uint16_t got2 = h2b.data<uint16_t>()[i];
    if (std::isnan(hv))
      EXPECT_TRUE(std::isnan(ref_bf16_value(got2))) << std::hex << i;
    else
      ASSERT_EQ(got2, ref_f32_to_bf16(float(hv))) << std::hex << i;
  }
  // to() of the same dtype is a view of the same storage.
  EXPECT_EQ(b.to(DType::BF16).raw(), b.raw());
  // Strided f16 view -> bf16.
  Tensor hv = h.slice(0, 10, 14).slice(1, 100, 107).permute({1, 0});
  Tensor hvb = hv.to(DType::BF16);
  EXPECT_EQ(hvb.shape(), (Shape{7, 4}));
  for_each_index(hvb.shape(), [&](const auto& i) {
    const double want = ref_get(hv, i);
    if (!std::isnan(want)) {
      EXPECT_EQ(ref_get(hvb, i), ref_bf16_value(ref_f32_to_bf16(float(want))));
    }
  });
}

TEST(Dtype, I64ToF32) {
  Tensor t = Tensor::empty({4}, DType::I64);
  const int64_t vals[4] = {0, -5, 1000, int64_t(1) << 40};
  std::memcpy(t.raw(), vals, sizeof(vals));
  EXPECT_EQ(t.to(DType::F32).to_vector(), (std::vector<float>{0.0f, -5.0f, 1000.0f, 0x1p40f}));
}

// ---- expand ------------------------------------------------------------------------------------------

TEST(TensorViews, ExpandRepeatsSizeOneDimensionsWithStrideZero) {
  Tensor t = iota({2, 1, 3});
  Tensor e = t.expand({2, 4, 3});
  EXPECT_EQ(e.shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(e.strides(), (Shape{3, 0, 1}));
  EXPECT_FALSE(e.is_contiguous());
  expect_view(e, [](const auto& idx) { return double(idx[0] * 3 + idx[2]); });
  expect_view(e.contiguous(), [](const auto& idx) { return double(idx[0] * 3 + idx[2]); });
  EXPECT_EQ(t.expand({2, 1, 3}).strides(), t.strides());
}

// ---- allocation --------------------------------------------------------------------------------------

// Records what Tensor asks of it; the memory comes from the host allocator.
class CountingAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    void* p = host_allocator().allocate(bytes);
    calls.push_back({p, bytes, true});
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    calls.push_back({p, bytes, false});
    host_allocator().deallocate(p, bytes);
  }
  const char* name() const override { return "counting"; }
  struct Call {
    void* p;
    size_t bytes;
    bool alloc;
  };
  std::vector<Call> calls;
};

// Installs an allocator for a device for the scope, then puts the previous one back.
struct AllocatorScope {
  AllocatorScope(Device d, Allocator* a) : dev(d), prev(set_allocator(d, a)) {}
  ~AllocatorScope() { set_allocator(dev, prev); }
  Device dev;
  Allocator* prev;
};

TEST(TensorAllocator, EmptyAndZerosGoThroughTheRegisteredAllocator) {
  ASSERT_EQ(allocator_for(Device::CPU), &host_allocator());
  EXPECT_STREQ(host_allocator().name(), "host");
  CountingAllocator counting;
  {
    AllocatorScope scope(Device::CPU, &counting);
    EXPECT_EQ(allocator_for(Device::CPU), &counting);
    void* p = nullptr;
    {
      Tensor t = Tensor::empty({3, 5}, DType::BF16);
      ASSERT_EQ(counting.calls.size(), 1u);
      EXPECT_TRUE(counting.calls[0].alloc);
      EXPECT_EQ(counting.calls[0].bytes, 30u);
      EXPECT_EQ(counting.calls[0].p, t.raw());
      p = t.raw();
      Tensor view = t.slice(0, 1, 2);
      t = Tensor();
      EXPECT_EQ(counting.calls.size(), 1u);  // the view keeps the buffer
      (void)view;
    }
    ASSERT_EQ(counting.calls.size(), 2u);
    EXPECT_FALSE(counting.calls[1].alloc);
    EXPECT_EQ(counting.calls[1].p, p);
    EXPECT_EQ(counting.calls[1].bytes, 30u);  // the size it was asked for, as a caching allocator bins by

    Tensor z = Tensor::zeros({4}, DType::I64);
    EXPECT_EQ(counting.calls.size(), 3u);
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(z.data<int64_t>()[i], 0);
    Tensor none = Tensor::empty({0, 7});
    EXPECT_EQ(counting.calls.size(), 3u);  // nothing to allocate
    EXPECT_EQ(none.numel(), 0);
  }
  EXPECT_EQ(allocator_for(Device::CPU), &host_allocator());
  // A tensor made while an allocator was registered goes back to it after it is swapped out.
  CountingAllocator other;
  Tensor survivor;
  {
    AllocatorScope scope(Device::CPU, &other);
    survivor = Tensor::empty({8});
  }
  survivor = Tensor();
  ASSERT_EQ(other.calls.size(), 2u);
  EXPECT_FALSE(other.calls[1].alloc);
}

TEST(TensorAllocator, HostBuffersAre64ByteAligned) {
  for (int64_t n : {1, 3, 15, 16, 17, 1000}) {
    Tensor t = Tensor::empty({n}, DType::BF16);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u) << n;
  }
}

TEST(TensorAllocatorDeathTest, DeviceWithoutAllocatorIsAnError) {
  if (allocator_for(Device::CUDA) != nullptr) GTEST_SKIP() << "an allocator is registered for cuda";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH((void)Tensor::empty({2}, DType::F32, Device::CUDA), "no allocator registered for device cuda");
}

// ---- data movement through a device's registered copies ----------------------------------------------

int g_copies = 0, g_uploads = 0, g_downloads = 0, g_zeros = 0;
void counting_copy(const Tensor& src, Tensor& dst) {
  ++g_copies;
  host_copy(src, dst);
}
void counting_to_host(void* dst, const void* src, size_t bytes) {
  ++g_downloads;
  std::memcpy(dst, src, bytes);
}
void counting_from_host(void* dst, const void* src, size_t bytes) {
  ++g_uploads;
  std::memcpy(dst, src, bytes);
}
void counting_zero(Tensor& t) {
  ++g_zeros;
  std::memset(t.raw(), 0, t.nbytes());
}

// Host memory under the CUDA tag, with counting copies: what core does for a device it knows only by its
// registrations (no backend involved).
struct FakeDevice {
  FakeDevice()
      : alloc(Device::CUDA, &counting),
        prev_copy(set_device_copy(Device::CUDA, &copies)) {
    g_copies = g_uploads = g_downloads = g_zeros = 0;
  }
  ~FakeDevice() { set_device_copy(Device::CUDA, prev_copy); }
  CountingAllocator counting;
  AllocatorScope alloc;
  DeviceCopy copies{counting_copy, counting_to_host, counting_from_host, counting_zero};
  const DeviceCopy* prev_copy;
};

TEST(TensorDevice, CoreCopiesGoThroughTheDevicesRegistration) {
  FakeDevice fake;
  const Device cuda = Device::CUDA;
  Tensor e = Tensor::empty({2, 3}, DType::F32, cuda);
  EXPECT_EQ(e.device(), cuda);
  EXPECT_EQ(fake.counting.calls.size(), 1u);
  Tensor z = Tensor::zeros({2, 3}, DType::BF16, cuda);
  EXPECT_EQ(z.device(), cuda);
  EXPECT_EQ(g_zeros, 1);
  EXPECT_EQ(z.to_vector(), std::vector<float>(6, 0.0f));
  EXPECT_EQ(g_downloads, 1);  // read back through the device's copy to the host

  // Host -> device into a strided bf16 destination, converted on the host's side before crossing.
  const Tensor src = iota({3, 4}).permute({1, 0});  // [4, 3], strided
  Tensor parent = Tensor::zeros({4, 5}, DType::BF16, cuda);
  Tensor dst = parent.slice(1, 1, 4);
  g_copies = g_uploads = 0;
  copy_into(src, dst);
  EXPECT_EQ(g_uploads, 1);
  EXPECT_EQ(g_copies, 1);  // staged contiguous on the device, then strided into dst there
  expect_view(Tensor::wrap(parent.raw(), {4, 5}, DType::BF16, nullptr, false), [](const auto& idx) {
    return idx[1] == 0 || idx[1] == 4 ? 0.0 : double(idx[0] + (idx[1] - 1) * 4);
  });

  // Device -> host into a strided f32 destination.
  Tensor back = Tensor::zeros({3, 4});
  Tensor back_t = back.permute({1, 0});
  g_downloads = 0;
  copy_into(dst, back_t);
  EXPECT_EQ(g_downloads, 1);
  expect_view(back, [](const auto& idx) { return double(idx[0] * 4 + idx[1]); });

  // Views, copies and concat on the device stay there and use its copy.
  g_copies = 0;
  const Tensor c = dst.contiguous(), k = dst.clone(), f = dst.to(DType::F32);
  const Tensor cat = concat({dst, dst}, 0);
  EXPECT_EQ(g_copies, 5);
  for (const Tensor* t : {&c, &k, &f, &cat}) EXPECT_EQ(t->device(), cuda);
  EXPECT_EQ(cat.shape(), (Shape{8, 3}));
  EXPECT_EQ(f.to_vector(), src.to_vector());
  EXPECT_EQ(dst.expand({4, 3}).device(), cuda);
}

}  // namespace
