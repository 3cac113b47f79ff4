// The memory and data-movement block of the backend table, and the small ops that used to be host loops
// in ops.cpp (element-wise, add_broadcast, embedding), on every compiled backend (backend_test_util.h),
// against references written here. Dtype conversions are expected to round as dtype.h's converters do;
// tests/core/tensor_test.cpp checks those bit by bit against first principles.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/ops.h"
#include "backend_test_util.h"
#include "core/allocator.h"
#include "core/dtype.h"
#include "core/tensor.h"

using namespace meshdit;

namespace {

using test::for_thread_counts;
using test::host_values;
using test::kEps32;
using test::random_tensor;
using test::to_d;
using test::Vec;

MESHDIT_BACKEND_SUITE(OpsCopy);
MESHDIT_BACKEND_SUITE(OpsToDevice);
MESHDIT_BACKEND_SUITE(OpsElementwise);
MESHDIT_BACKEND_SUITE(OpsAddBroadcast);
MESHDIT_BACKEND_SUITE(OpsEmbedding);
MESHDIT_BACKEND_SUITE(OpsKernelTable);

// The value a float v takes once stored as dt.
double stored(double v, DType dt) {
  switch (dt) {
    case DType::F32: return double(float(v));
    case DType::BF16: return double(bf16_to_f32(f32_to_bf16(float(v))));
    case DType::F16: return double(f16_to_f32(f32_to_f16(float(v))));
    case DType::F64: return v;
    case DType::I64:
    case DType::I32: return double(int64_t(v));
    case DType::U8: return double(uint8_t(v));
  }
  return 0;
}

// A host tensor of dtype dt holding `values` (each exactly representable in dt).
Tensor host_tensor(const Shape& shape, DType dt, const Vec& values) {
  Tensor t = Tensor::empty(shape, dt);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = values[size_t(i)];
    char* p = static_cast<char*>(t.raw()) + size_t(i) * dtype_size(dt);
    switch (dt) {
      case DType::F32: { const float f = float(v); std::memcpy(p, &f, 4); break; }
      case DType::BF16: { const uint16_t h = f32_to_bf16(float(v)); std::memcpy(p, &h, 2); break; }
      case DType::F16: { const uint16_t h = f32_to_f16(float(v)); std::memcpy(p, &h, 2); break; }
      case DType::F64: std::memcpy(p, &v, 8); break;
      case DType::I64: { const int64_t n = int64_t(v); std::memcpy(p, &n, 8); break; }
      case DType::I32: { const int32_t n = int32_t(v); std::memcpy(p, &n, 4); break; }
      case DType::U8: *p = char(uint8_t(v)); break;
    }
  }
  return t;
}

Vec exact(size_t n) { return Vec(n, 0.0); }

// ---- strided copy with dtype conversion ----------------------------------------------------------------

// src view (a, b, c) = P[b][c + 1][a] of P [4, 6, 5]; dst view (a, b, c) = Q[a][b][c + 2] of Q [5, 4, 6],
// whose other elements must keep their sentinel. Float dtypes both ways, integers to and from float.
TEST_P(OpsCopy, StridedWithEveryDtypeConversion) {
  struct Pair {
    DType from, to;
  };
  std::vector<Pair> pairs;
  for (DType a : {DType::F32, DType::BF16, DType::F16, DType::F64})
    for (DType b : {DType::F32, DType::BF16, DType::F16, DType::F64}) pairs.push_back({a, b});
  for (DType i : {DType::I64, DType::I32}) {
    pairs.push_back({i, DType::F32});
    pairs.push_back({DType::F32, i});
  }
  const std::vector<float> rv = random_tensor({4, 6, 5}, 3000, 3.0f).to_vector();
  for (const Pair& pr : pairs) {
    SCOPED_TRACE(std::string(dtype_name(pr.from)) + " -> " + dtype_name(pr.to));
    const bool integral = pr.from == DType::I64 || pr.from == DType::I32 || pr.to == DType::I64 ||
                          pr.to == DType::I32;
    Vec pv(rv.size());
    for (size_t i = 0; i < rv.size(); ++i) pv[i] = stored(integral ? std::round(rv[i] * 100) : rv[i], pr.from);
    const Tensor P = on(host_tensor({4, 6, 5}, pr.from, pv));
    const Tensor src = P.permute({2, 0, 1}).slice(2, 1, 5);
    ASSERT_EQ(src.shape(), (Shape{5, 4, 4}));
    Tensor Q = on(host_tensor({5, 4, 6}, pr.to, Vec(5 * 4 * 6, 7.0)));
    Tensor dst = Q.slice(2, 2, 6);
    backend().copy(src, dst);
    Vec want(5 * 4 * 6, 7.0);
    for (int64_t a = 0; a < 5; ++a)
      for (int64_t b = 0; b < 4; ++b)
        for (int64_t c = 0; c < 4; ++c)
          want[size_t((a * 4 + b) * 6 + c + 2)] = stored(pv[size_t((b * 6 + c + 1) * 5 + a)], pr.to);
    EXPECT_TRUE(close(Q, want, exact(want.size())));
    // copy_into, contiguous() and clone() on the device reach the same copy.
    Tensor Q2 = on(host_tensor({5, 4, 6}, pr.to, Vec(5 * 4 * 6, 7.0)));
    Tensor dst2 = Q2.slice(2, 2, 6);
    copy_into(src, dst2);
    EXPECT_TRUE(close(Q2, want, exact(want.size())));
    Vec src_vals;
    for (int64_t a = 0; a < 5; ++a)
      for (int64_t b = 0; b < 4; ++b)
        for (int64_t c = 0; c < 4; ++c) src_vals.push_back(pv[size_t((b * 6 + c + 1) * 5 + a)]);
    for (const Tensor& t : {src.contiguous(), src.clone()}) {
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_EQ(t.dtype(), pr.from);
      EXPECT_TRUE(close(t, src_vals, exact(src_vals.size())));
    }
    Vec conv(src_vals.size());
    for (size_t i = 0; i < conv.size(); ++i) conv[i] = stored(src_vals[i], pr.to);
    const Tensor t = src.to(pr.to);
    EXPECT_EQ(t.dtype(), pr.to);
    EXPECT_TRUE(close(t, conv, exact(conv.size())));
  }
}

// A stride-0 (expanded) source, a 0-d tensor and an empty one.
TEST_P(OpsCopy, BroadcastScalarAndEmpty) {
  const Tensor row = on(Tensor::from_f32({1, 4}, {1, 2, 3, 4}));
  Tensor dst = empty({3, 4}, DType::BF16);
  backend().copy(row.expand({3, 4}), dst);
  EXPECT_TRUE(close(dst, {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}, exact(12)));
  EXPECT_TRUE(close(row.expand({3, 4}).contiguous(), {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}, exact(12)));

  const Tensor scalar = on(Tensor::from_f32({1}, {2.5f})).reshape({});
  Tensor s = empty({}, DType::F16);
  backend().copy(scalar, s);
  EXPECT_TRUE(close(s, {2.5}, exact(1)));

  Tensor e = empty({0, 3});
  backend().copy(on(Tensor::empty({0, 3})), e);
  EXPECT_EQ(e.numel(), 0);
}

TEST_P(OpsCopy, ConcatOnTheDevice) {
  const Tensor a = on(random_tensor({2, 3, 4}, 3100)), b = on(random_tensor({2, 5, 4}, 3101));
  const Tensor c = concat({a, b.to(DType::BF16)}, 1);
  ASSERT_EQ(c.shape(), (Shape{2, 8, 4}));
  EXPECT_EQ(c.device(), device());
  const Vec ad = to_d(a), bd = to_d(b.to(DType::BF16));
  Vec want;
  for (int64_t i = 0; i < 2; ++i) {
    want.insert(want.end(), ad.begin() + i * 12, ad.begin() + (i + 1) * 12);
    want.insert(want.end(), bd.begin() + i * 20, bd.begin() + (i + 1) * 20);
  }
  EXPECT_TRUE(close(c, want, exact(want.size())));
}

TEST_P(OpsCopy, TableByteCopiesAndZero) {
  const std::vector<float> v = random_tensor({37}, 3200).to_vector();
  Tensor d = empty({37});
  backend().copy_from_host(d.raw(), v.data(), v.size() * 4);
  std::vector<float> back(v.size());
  backend().copy_to_host(back.data(), d.raw(), back.size() * 4);
  EXPECT_EQ(back, v);
  Tensor z = empty({5, 3}, DType::I64);
  backend().zero(z);
  for (float f : host_values(z)) EXPECT_EQ(f, 0.0f);
  const Tensor zf = Tensor::zeros({4, 4}, DType::BF16, device());
  EXPECT_EQ(zf.device(), device());
  for (float f : host_values(zf)) EXPECT_EQ(f, 0.0f);
}

// ---- host <-> device, and placing weights ----------------------------------------------------------------

TEST_P(OpsToDevice, RoundTripKeepsDtypeAndBytes) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I64}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor h = random_tensor({3, 7}, 3300, 100.0f).to(dt);
    const Tensor d = ops::to_device(h, device());
    EXPECT_EQ(d.device(), device());
    EXPECT_EQ(d.dtype(), dt);
    EXPECT_EQ(d.shape(), h.shape());
    const Tensor back = ops::to_device(d, Device::CPU);
    EXPECT_EQ(back.device(), Device::CPU);
    ASSERT_EQ(back.nbytes(), h.nbytes());
    EXPECT_EQ(std::memcmp(back.raw(), h.raw(), h.nbytes()), 0);
  }
  // A strided host view arrives with its values in logical order.
  const Tensor parent = random_tensor({6, 5}, 3301);
  const Tensor view = parent.permute({1, 0}).slice(0, 1, 4);
  EXPECT_EQ(host_values(ops::to_device(view, device())), view.to_vector());
  // Already there: the same tensor, not a copy; an absent tensor stays absent.
  const Tensor d = on(parent);
  EXPECT_EQ(ops::to_device(d, device()).raw(), d.raw());
  EXPECT_FALSE(ops::to_device(Tensor(), device()).defined());
}

// A loaded weight is a read-only view of a memory-mapped file, kept alive by the mapping's owner
// (io/safetensors.cpp). On the CPU place() hands back that view itself; elsewhere a copy in its dtype.
TEST_P(OpsToDevice, PlaceKeepsTheMappedViewOnTheHost) {
  auto file = std::make_shared<std::vector<uint16_t>>(6 * 8);
  for (size_t i = 0; i < file->size(); ++i) (*file)[i] = f32_to_bf16(float(i) * 0.25f - 3.0f);
  const Tensor mapped = Tensor::wrap(file->data(), {6, 8}, DType::BF16, file, /*read_only=*/true);
  const Tensor shard = mapped.slice(1, 2, 6);  // a row-parallel shard: columns [2, 6), not contiguous
  for (const Tensor* w : {&mapped, &shard}) {
    const Tensor p = ops::place(*w, device());
    EXPECT_EQ(p.device(), device());
    EXPECT_EQ(p.dtype(), DType::BF16);
    EXPECT_EQ(p.shape(), w->shape());
    EXPECT_EQ(host_values(p), w->to_vector());
    if (device() == Device::CPU) {
      EXPECT_EQ(p.raw(), w->raw());  // the mapped bytes, no copy
      EXPECT_TRUE(p.read_only());
      EXPECT_EQ(p.strides(), w->strides());
    } else {
      EXPECT_NE(p.raw(), w->raw());
    }
  }
}

TEST_P(OpsToDevice, AllocatesThroughTheDevicesAllocator) {
  Allocator* a = allocator_for(device());
  ASSERT_NE(a, nullptr) << "no allocator registered for " << device_name(device());
  const Tensor t = empty({3, 5}, DType::BF16);
  EXPECT_EQ(t.device(), device());
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  EXPECT_EQ(empty({0, 4}).numel(), 0);
}

// ---- element-wise ----------------------------------------------------------------------------------------

TEST_P(OpsElementwise, FullAffineLerpClampMul) {
  const Tensor f = ops::full({3, 5}, 2.5f, device());
  EXPECT_TRUE(close(f, Vec(15, 2.5), exact(15)));
  EXPECT_TRUE(close(ops::full({2}, -INFINITY, device()), {-INFINITY, -INFINITY}, exact(2)));

  // Contiguous f32, a strided view and a bf16 tensor: the op widens and packs what the kernel needs.
  const Tensor xa = on(random_tensor({40, 33}, 3400, 2.0f));
  const Tensor xb = on(random_tensor({33, 80}, 3401, 2.0f)).permute({1, 0}).slice(0, 10, 50);
  const Tensor xc = on(random_tensor({40, 33}, 3402, 2.0f)).to(DType::BF16);
  const float a = 0.7f, b = -1.25f, w = 3.5f;
  for_thread_counts([&] {
    for (const Tensor* x : {&xa, &xb, &xc}) {
      for (const Tensor* y : {&xa, &xb, &xc}) {
        const Vec xd = to_d(*x), yd = to_d(*y);
        Vec aff(xd.size()), taff(xd.size()), lerp(xd.size()), tl(xd.size()), mul(xd.size()), tm(xd.size());
        for (size_t i = 0; i < xd.size(); ++i) {
          aff[i] = xd[i] * a + b;
          taff[i] = 2 * kEps32 * (std::fabs(xd[i] * a) + std::fabs(b)) + 1e-30;
          lerp[i] = xd[i] + w * (yd[i] - xd[i]);
          tl[i] = 4 * kEps32 * (std::fabs(xd[i]) + std::fabs(w) * (std::fabs(xd[i]) + std::fabs(yd[i]))) + 1e-30;
          mul[i] = xd[i] * yd[i];
          tm[i] = kEps32 * std::fabs(mul[i]) + 1e-30;
        }
        EXPECT_TRUE(close(ops::affine(*x, a, b), aff, taff));
        EXPECT_TRUE(close(ops::lerp(*x, *y, w), lerp, tl));
        EXPECT_TRUE(close(ops::mul(*x, *y), mul, tm));
      }
    }
  });

  // clamp_ in place, exact, infinities included.
  std::vector<float> v = random_tensor({50}, 3403, 3.0f).to_vector();
  v[3] = INFINITY;
  v[7] = -INFINITY;
  Tensor c = on(Tensor::from_f32({50}, v)).clone();
  ops::clamp_(c, -1.0f, 2.0f);
  Vec want(v.size());
  for (size_t i = 0; i < v.size(); ++i) want[i] = std::min(2.0, std::max(-1.0, double(v[i])));
  EXPECT_TRUE(close(c, want, exact(want.size())));
}

// The element-wise kernels may write over an input (the table's contract).
TEST_P(OpsElementwise, OutputMayAliasAnInput) {
  const Tensor x0 = on(random_tensor({7, 9}, 3500));
  const Tensor y = on(random_tensor({7, 9}, 3501));
  const Vec xd = to_d(x0), yd = to_d(y);
  Tensor x = x0.clone();
  backend().affine(x, 2.0f, 1.0f, x);
  Vec want(xd.size());
  for (size_t i = 0; i < xd.size(); ++i) want[i] = double(float(xd[i] * 2.0) + 1.0f);
  EXPECT_TRUE(close(x, want, Vec(want.size(), 4 * kEps32 * 8)));
  x = x0.clone();
  backend().mul(x, y, x);
  for (size_t i = 0; i < xd.size(); ++i) want[i] = xd[i] * yd[i];
  EXPECT_TRUE(close(x, want, Vec(want.size(), kEps32 * 16)));
  x = x0.clone();
  backend().lerp(x, y, 0.25f, x);
  for (size_t i = 0; i < xd.size(); ++i) want[i] = xd[i] + 0.25 * (yd[i] - xd[i]);
  EXPECT_TRUE(close(x, want, Vec(want.size(), 4 * kEps32 * 8)));
}

// float32 x / d + b, each step rounded once: the double quotient and sum of floats round to float32 exactly
// as float32 arithmetic would (53 >= 2 * 24 + 2 bits), whatever the compiler does with float expressions.
float div_add_ref(float x, float d, float b) { return float(double(float(double(x) / double(d))) + double(b)); }

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// The VAE input as diffusers computes it (Flux's scaling and shift factors), bit for bit: a kernel that
// multiplies by 1 / d, or fuses the add, fails here.
TEST_P(OpsElementwise, DivAddIsATrueDivisionThenTheAdd) {
  const float d = 0.3611f, b = 0.1159f;
  // Several pool tasks, and values where a reciprocal or a fused add shows.
  std::vector<float> v = random_tensor({3 * (1 << 15) + 11}, 3600, 3.0f).to_vector();
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 1e-40f, -1e-40f, 3.4e38f, -b * d, 1.0f};
  std::copy(std::begin(specials), std::end(specials), v.begin());
  const Tensor x = on(Tensor::from_f32({int64_t(v.size())}, v));
  std::vector<float> want(v.size());
  for (size_t i = 0; i < v.size(); ++i) want[i] = div_add_ref(v[i], d, b);
  int64_t reciprocal_differs = 0;
  for (size_t i = 0; i < v.size(); ++i) reciprocal_differs += !same_bits(want[i], float(double(v[i]) * (1.0f / d)) + b);
  ASSERT_GT(reciprocal_differs, 0) << "the inputs do not tell a division from a multiplication by 1 / d";
  for_thread_counts([&] {
    const std::vector<float> got = values(ops::div_add(x, d, b));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_TRUE(same_bits(got[i], want[i]))
          << i << ": " << v[i] << " / " << d << " + " << b << " gave " << got[i] << ", want " << want[i];
  });

  // Strided and bf16 inputs are read as float32; the kernel may write over its input; a negative divisor.
  const Tensor xs = on(random_tensor({33, 80}, 3601, 2.0f)).permute({1, 0}).slice(0, 10, 50);
  const Tensor xb = on(random_tensor({40, 33}, 3602, 2.0f)).to(DType::BF16);
  for (const Tensor* t : {&xs, &xb}) {
    const std::vector<float> tv = values(*t), got = values(ops::div_add(*t, -1.7f, 0.25f));
    ASSERT_EQ(got.size(), tv.size());
    for (size_t i = 0; i < tv.size(); ++i) ASSERT_TRUE(same_bits(got[i], div_add_ref(tv[i], -1.7f, 0.25f))) << i;
  }
  Tensor inplace = x.clone();
  backend().div_add(inplace, d, b, inplace);
  EXPECT_TRUE(close(inplace, Vec(want.begin(), want.end()), exact(want.size())));
}

// ---- add_broadcast ---------------------------------------------------------------------------------------

TEST_P(OpsAddBroadcast, SizeOneDimensionsOfEither) {
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{2, 1, 4}, {1, 3, 4}}, {{2, 3, 4}, {1, 1, 4}}, {{1, 1, 1}, {2, 3, 4}},
                        {{5}, {5}},             {{2, 3, 1}, {2, 3, 70}}, {{1, 1, 3, 5}, {2, 4, 1, 5}}};
  unsigned seed = 3600;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.a) + " + " + shape_str(c.b));
    const Tensor a = on(random_tensor(c.a, ++seed)), b = on(random_tensor(c.b, ++seed).to(DType::BF16));
    Shape out(c.a.size());
    for (size_t d = 0; d < out.size(); ++d) out[d] = std::max(c.a[d], c.b[d]);
    const Vec ad = to_d(a), bd = to_d(b);
    const Shape sa = contiguous_strides(c.a), sb = contiguous_strides(c.b);
    Vec want(size_t(shape_numel(out))), tol(want.size());
    std::vector<int64_t> idx(out.size(), 0);
    for (size_t i = 0; i < want.size(); ++i) {
      int64_t oa = 0, ob = 0;
      for (size_t d = 0; d < out.size(); ++d) {
        oa += (c.a[d] == 1 ? 0 : idx[d]) * sa[d];
        ob += (c.b[d] == 1 ? 0 : idx[d]) * sb[d];
      }
      want[i] = ad[size_t(oa)] + bd[size_t(ob)];
      tol[i] = kEps32 * std::fabs(want[i]) + 1e-30;
      for (int64_t d = int64_t(out.size()) - 1; d >= 0; --d) {
        if (++idx[size_t(d)] < out[size_t(d)]) break;
        idx[size_t(d)] = 0;
      }
    }
    for_thread_counts([&] {
      const Tensor y = ops::add_broadcast(a, b);
      EXPECT_EQ(y.shape(), out);
      EXPECT_TRUE(close(y, want, tol));
      EXPECT_TRUE(close(ops::add_broadcast(b, a), want, tol));
    });
  }
  // A strided operand (a row-parallel Linear adds its bias to a view).
  const Tensor x = on(random_tensor({3, 10}, 3700)).slice(1, 2, 8);
  const Tensor bias = on(random_tensor({1, 6}, 3701));
  const Vec xd = to_d(x), bd = to_d(bias);
  Vec want(xd.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = xd[i] + bd[i % 6];
  EXPECT_TRUE(close(ops::add_broadcast(x, bias), want, Vec(want.size(), 8 * kEps32)));
}

// ---- embedding -------------------------------------------------------------------------------------------

TEST_P(OpsEmbedding, GathersRowsOfEveryLayout) {
  const int64_t V = 11, D = 6;
  const Tensor ids_h = host_tensor({2, 3}, DType::I64, {0, 10, 3, 3, 7, 1});
  const std::vector<int64_t> ids = {0, 10, 3, 3, 7, 1};
  const Tensor wide = on(random_tensor({V, D + 3}, 3800));
  const Tensor transposed = on(random_tensor({D, V}, 3801)).permute({1, 0});
  struct Table {
    std::string name;
    Tensor t;
  };
  const std::vector<Table> tables = {
      {"f32", on(random_tensor({V, D}, 3802))},
      {"bf16", ops::place(random_tensor({V, D}, 3803).to(DType::BF16), device())},
      {"f16", ops::place(random_tensor({V, D}, 3804).to(DType::F16), device())},
      {"column slice", wide.slice(1, 1, 1 + D)},
      {"transposed", transposed},
  };
  for (const Table& tb : tables) {
    SCOPED_TRACE(tb.name);
    ASSERT_EQ(tb.t.shape(), (Shape{V, D}));
    const Vec td = to_d(tb.t);
    Vec want;
    for (int64_t id : ids) want.insert(want.end(), td.begin() + id * D, td.begin() + (id + 1) * D);
    for (DType idt : {DType::I64, DType::I32}) {
      auto r = ops::embedding(tb.t, on(ids_h.to(idt)));
      ASSERT_TRUE(r.ok()) << r.error().message;
      EXPECT_EQ(r.value().shape(), (Shape{2, 3, D}));
      EXPECT_EQ(r.value().dtype(), DType::F32);
      EXPECT_TRUE(close(r.value(), want, exact(want.size())));
    }
  }
}

TEST_P(OpsEmbedding, IdOutsideTheTableIsAnInputError) {
  const Tensor table = on(random_tensor({11, 4}, 3900));
  for (double bad : {11.0, -1.0, 1e6}) {
    auto r = ops::embedding(table, on(host_tensor({4}, DType::I64, {0, 2, bad, 3})));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("token id " + std::to_string(int64_t(bad))), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("11 rows"), std::string::npos) << r.error().message;
  }
}

// ---- the table itself ------------------------------------------------------------------------------------

// Every entry filled: a designated initialiser leaves an entry it does not name null.
TEST_P(OpsKernelTable, EveryEntryIsSet) {
  const Backend& b = backend();
  EXPECT_NE(b.name, nullptr);
  struct Entry {
    const char* name;
    bool set;
  };
#define MESHDIT_ENTRY(m) Entry{#m, b.m != nullptr}
  const Entry entries[] = {
      MESHDIT_ENTRY(linear),
      MESHDIT_ENTRY(linear_quantized),
      MESHDIT_ENTRY(layer_norm),
      MESHDIT_ENTRY(rms_norm),
      MESHDIT_ENTRY(modulate),
      MESHDIT_ENTRY(layer_norm_modulate),
      MESHDIT_ENTRY(free_memory),
      MESHDIT_ENTRY(add_gated),
      MESHDIT_ENTRY(activation),
      MESHDIT_ENTRY(softmax),
      MESHDIT_ENTRY(attention_accumulate),
      MESHDIT_ENTRY(attention_finalize),
      MESHDIT_ENTRY(rope),
      MESHDIT_ENTRY(conv2d),
      MESHDIT_ENTRY(group_norm),
      MESHDIT_ENTRY(upsample_nearest2x),
      MESHDIT_ENTRY(group_sums),
      MESHDIT_ENTRY(group_norm_apply),
      MESHDIT_ENTRY(fill),
      MESHDIT_ENTRY(affine),
      MESHDIT_ENTRY(lerp),
      MESHDIT_ENTRY(clamp),
      MESHDIT_ENTRY(mul),
      MESHDIT_ENTRY(div_add),
      MESHDIT_ENTRY(allocator),
      MESHDIT_ENTRY(copy),
      MESHDIT_ENTRY(copy_to_host),
      MESHDIT_ENTRY(copy_from_host),
      MESHDIT_ENTRY(zero),
      MESHDIT_ENTRY(embedding),
      MESHDIT_ENTRY(timestep_embedding),
      MESHDIT_ENTRY(add_broadcast),
      MESHDIT_ENTRY(rope_tables),
      MESHDIT_ENTRY(moments_from_sums),
      MESHDIT_ENTRY(blend),
      MESHDIT_ENTRY(gather_bias),
      MESHDIT_ENTRY(mask_to_bias),
      MESHDIT_ENTRY(argmax_rows),
      MESHDIT_ENTRY(find_rows),
      MESHDIT_ENTRY(gather_rows),
      MESHDIT_ENTRY(axpby),
      MESHDIT_ENTRY(row_std),
      MESHDIT_ENTRY(row_l2),
      MESHDIT_ENTRY(scale_rows_by_ratio),
      MESHDIT_ENTRY(rope_half),
      MESHDIT_ENTRY(l1_change_sums),
  };
#undef MESHDIT_ENTRY
  // Every member but `name` and `device` is a pointer listed above: a kernel added to the table without a
  // line here changes the size and fails this.
  EXPECT_EQ(sizeof(Backend), (std::size(entries) + 2) * sizeof(void*)) << "list the new Backend member here";
  for (const Entry& e : entries) EXPECT_TRUE(e.set) << b.name << " leaves " << e.name << " unset";
  EXPECT_EQ(&backend_for(b.device), &b);
  EXPECT_EQ(find_backend(b.device), &b);
}

TEST(CompiledBackends, HostFirstAndOneBackendPerDevice) {
  const auto& list = compiled_backends();
  ASSERT_FALSE(list.empty());
  EXPECT_EQ(list[0]->device, Device::CPU);
  EXPECT_EQ(list[0], &cpu_backend());
  for (size_t i = 0; i < list.size(); ++i)
    for (size_t j = i + 1; j < list.size(); ++j) EXPECT_NE(list[i]->device, list[j]->device);
  for (const Backend* b : list) {
    EXPECT_NE(allocator_for(b->device), nullptr) << b->name;
    EXPECT_NE(device_copy(b->device), nullptr) << b->name;
  }
}

}  // namespace
