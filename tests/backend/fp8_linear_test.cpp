// FP8 precision's linear on the CPU (the emulation the GPU is tested against): against a plain double-precision
// computation of the same quantization (e4m3 values of x and w under their per-tensor scales amax / 448, products
// summed in double, times both scales), and its error against f32 on random data.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "core/fp8.h"

using namespace meshdit;

namespace {

struct Quantized {
  std::vector<double> q;  // e4m3 values, without the scale
  double scale = 1;
};

Quantized quantize(const std::vector<float>& v) {
  float amax = 0;
  for (float f : v) amax = std::fmax(amax, std::fabs(f));
  Quantized r;
  const float scale = e4m3_scale(amax);
  r.scale = scale;
  for (float f : v) r.q.push_back(e4m3_to_f32(quantize_e4m3(f, scale)));
  return r;
}

// y and, per element, the sum of |terms|: an f32 sum of K terms is within K x 2^-24 of it (under 1e-5 for K <= 160).
void reference(const Tensor& x, const Tensor& w, const Tensor& b, std::vector<double>& y, std::vector<double>& mag) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const Quantized qx = quantize(x.contiguous().to_vector()), qw = quantize(w.to(DType::F32).to_vector());
  const std::vector<float> bias = b.to_vector();
  y.assign(size_t(M * N), 0.0);
  mag.assign(size_t(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double t = qx.q[size_t(m * K + k)] * qw.q[size_t(n * K + k)];
        s += t;
        a += std::fabs(t);
      }
      y[size_t(m * N + n)] = s * qx.scale * qw.scale + bias[size_t(n)];
      mag[size_t(m * N + n)] = a * qx.scale * qw.scale;
    }
}

TEST(Fp8Linear, CpuMatchesADoubleReferenceOfTheSameQuantization) {
  struct Case {
    int64_t M, K, N;
    DType wt;
  };
  // Many rows (the tiled path of f32 and bf16), few rows (their small-M path), K not a multiple of 16, bf16 weights.
  for (const Case& c : {Case{37, 96, 40, DType::F32}, Case{3, 64, 33, DType::F32}, Case{20, 50, 24, DType::BF16},
                        Case{70, 130, 300, DType::BF16}}) {
    SCOPED_TRACE("M " + std::to_string(c.M) + " K " + std::to_string(c.K) + " N " + std::to_string(c.N) + " " +
                 dtype_name(c.wt));
    const Tensor xs = test::random_tensor({c.M, c.K + 5}, 8100);
    const Tensor x = xs.slice(1, 0, c.K);  // strided rows
    const Tensor w = test::random_tensor({c.N, c.K}, 8101, 0.2f).to(c.wt);
    const Tensor b = test::random_tensor({c.N}, 8102);
    std::vector<double> want, mag;
    reference(x, w, b, want, mag);
    ScopedPrecision p(Precision::FP8);
    const std::vector<float> got = ops::linear(x, w, &b).to_vector();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5 * mag[i] + 1e-6 * std::fabs(want[i]) + 1e-7) << "element " << i;
    // The activation applies after the scales and the bias, as in every other precision.
    const std::vector<float> relu = ops::linear(x, w, &b, Act::Relu).to_vector();
    for (size_t i = 0; i < relu.size(); ++i) ASSERT_EQ(relu[i], got[i] > 0 ? got[i] : 0.0f) << "element " << i;
  }
}

// Against f32 on random normal data: e4m3 keeps 3 mantissa bits (relative rounding error up to 2^-4 a value, about
// 2.5 % rms), both operands rounded: a few percent of the output's norm. The bound, 5e-2, is what FP8 promises;
// bf16 on the same data is an order of magnitude tighter, which the test checks too (FP8 really ran).
TEST(Fp8Linear, RelativeErrorAgainstF32IsAFewPercent) {
  const Tensor x = test::random_tensor({64, 256}, 8110);
  const Tensor w = test::random_tensor({128, 256}, 8111, 0.1f);
  const std::vector<float> ref = ops::linear(x, w).to_vector();
  auto rel_l2 = [&](Precision prec) {
    ScopedPrecision p(prec);
    const std::vector<float> y = ops::linear(x, w).to_vector();
    double e = 0, n = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      e += (double(y[i]) - ref[i]) * (double(y[i]) - ref[i]);
      n += double(ref[i]) * ref[i];
    }
    return std::sqrt(e / n);
  };
  const double fp8 = rel_l2(Precision::FP8), bf16 = rel_l2(Precision::BF16);
  std::printf("relative L2 error against f32: fp8 %.3e, bf16 %.3e\n", fp8, bf16);
  EXPECT_LT(fp8, 5e-2);
  EXPECT_GT(fp8, 4 * bf16);
}

TEST(Fp8Linear, PrecisionIsParsedNamedAndDescribed) {
  auto p = parse_precision("fp8");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, Precision::FP8);
  EXPECT_STREQ(precision_name(Precision::FP8), "fp8");
  EXPECT_EQ(precision_description(Precision::FP8).rfind("fp8", 0), 0u);
  auto bad = parse_precision("fp4");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("fp8"), std::string::npos);
}

}  // namespace
