// The integer dot products of quantized weights with 8-bit activations: every ISA this CPU runs gives the
// portable definition's numbers (up to float summation order), the portable definition equals the exact dot of
// the decoded operands, and a Linear over few rows uses them under bf16 precision.
#include "backend/cpu/quant_dot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../test_util.h"
#include "backend/cpu/cpu_info.h"
#include "backend/ops.h"
#include "backend/precision.h"

namespace meshdit::cpu {
namespace {

struct Operands {
  int64_t K, M;
  std::vector<uint8_t> w;  // one weight row of K values
  std::vector<float> w_decoded;
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> sums;
};

Operands make(QuantType t, int64_t K, int64_t M, unsigned seed) {
  Operands o{K,
             M,
             std::vector<uint8_t>(quant_row_bytes(t, K)),
             std::vector<float>(size_t(K)),
             std::vector<int8_t>(size_t(M * K)),
             std::vector<float>(size_t(M * K / kQ8Block)),
             std::vector<int32_t>(size_t(M * K / kQ8Block))};
  const Tensor w = test::random_tensor({K}, seed, 0.1f);
  quantize_row(t, w.data<float>(), o.w.data(), K);
  dequantize_row(t, o.w.data(), o.w_decoded.data(), K);
  const Tensor x = test::random_tensor({M, K}, seed + 1);
  for (int64_t m = 0; m < M; ++m)
    quantize_row_q8(x.data<float>() + m * K, K, o.q.data() + m * K, o.d.data() + m * K / kQ8Block,
                    o.sums.data() + m * K / kQ8Block);
  return o;
}

// Restores the dispatch choice after a test that forces one.
struct IsaScope {
  QuantDotIsa prev = quant_dot_isa();
  ~IsaScope() { EXPECT_TRUE(set_quant_dot_isa(prev).ok()); }
};

TEST(QuantDot, ActivationsRoundToTheirBlockScale) {
  const Tensor x = test::random_tensor({64}, 3, 5.0f);
  std::vector<int8_t> q(64);
  float d[2];
  int32_t sums[2];
  quantize_row_q8(x.data<float>(), 64, q.data(), d, sums);
  for (int b = 0; b < 2; ++b) {
    float amax = 0;
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, std::fabs(x.data<float>()[b * 32 + i]));
      s += q[size_t(b * 32 + i)];
      EXPECT_LE(std::fabs(float(q[size_t(b * 32 + i)]) * d[b] - x.data<float>()[b * 32 + i]), 0.5f * d[b] * 1.0001f);
    }
    EXPECT_FLOAT_EQ(d[b], amax / 127);
    EXPECT_EQ(sums[b], s);
  }
}

TEST(QuantDot, PortableIsTheDotOfTheDecodedOperands) {
  IsaScope scope;
  ASSERT_TRUE(set_quant_dot_isa(QuantDotIsa::Portable).ok());
  for (QuantType t : {QuantType::Q8_0, QuantType::Q4_K}) {
    const Operands o = make(t, 768, 3, 10);
    std::vector<float> out(3);
    quant_dot_rows(t, o.w.data(), o.K, o.q.data(), o.d.data(), o.sums.data(), o.M, out.data());
    for (int64_t m = 0; m < o.M; ++m) {
      double exact = 0, mag = 0;
      for (int64_t k = 0; k < o.K; ++k) {
        const double xv = double(o.q[size_t(m * o.K + k)]) * o.d[size_t((m * o.K + k) / kQ8Block)];
        exact += double(o.w_decoded[size_t(k)]) * xv;
        mag += std::fabs(double(o.w_decoded[size_t(k)]) * xv);
      }
      EXPECT_NEAR(out[size_t(m)], exact, 1e-5 * mag) << quant_type_name(t) << " row " << m;
    }
  }
}

TEST(QuantDot, EveryIsaThisCpuRunsGivesThePortableNumbers) {
  IsaScope scope;
  for (QuantType t : {QuantType::Q8_0, QuantType::Q4_K}) {
    for (int64_t M : {1, 3, 4, 7}) {
      const Operands o = make(t, 1024, M, unsigned(20 + M));
      std::vector<float> want(static_cast<size_t>(M)), got(static_cast<size_t>(M));
      ASSERT_TRUE(set_quant_dot_isa(QuantDotIsa::Portable).ok());
      quant_dot_rows(t, o.w.data(), o.K, o.q.data(), o.d.data(), o.sums.data(), M, want.data());
      int ran = 0;
      for (QuantDotIsa isa : {QuantDotIsa::Avx2, QuantDotIsa::AvxVnni, QuantDotIsa::Avx512Vnni}) {
        if (!set_quant_dot_isa(isa).ok()) continue;
        ++ran;
        quant_dot_rows(t, o.w.data(), o.K, o.q.data(), o.d.data(), o.sums.data(), M, got.data());
        for (int64_t m = 0; m < M; ++m)
          EXPECT_NEAR(got[size_t(m)], want[size_t(m)], 1e-4 * (std::fabs(want[size_t(m)]) + 1))
              << quant_type_name(t) << " " << quant_dot_isa_name(isa) << " M=" << M << " row " << m;
      }
      if (cpu_info().avx2 && cpu_info().fma) {
        EXPECT_GT(ran, 0);
      }
    }
  }
}

TEST(QuantDot, BestIsWhatTheCpuHas) {
  const QuantDotIsa best = best_quant_dot_isa();
  const CpuInfo& c = cpu_info();
  if (c.avx2 && c.avx512vl && c.avx512_vnni) {
    EXPECT_EQ(best, QuantDotIsa::Avx512Vnni);
  } else if (c.avx2 && c.avx_vnni) {
    EXPECT_EQ(best, QuantDotIsa::AvxVnni);
  } else if (c.avx2 && c.fma) {
    EXPECT_EQ(best, QuantDotIsa::Avx2);
  } else {
    EXPECT_EQ(best, QuantDotIsa::Portable);
  }
  EXPECT_EQ(quant_dot_isa(), best);  // nothing set: the best one runs
}

// Under bf16 precision a product over few rows takes the integer path: close to the decoded weight's product
// (the activations' 8-bit rounding), and different from it (so the path did run).
TEST(QuantDot, LinearOverFewRowsUsesThemUnderBf16) {
  for (QuantType t : {QuantType::Q8_0, QuantType::Q4_K}) {
    const int64_t N = 96, K = 1024, M = 2;
    const Tensor w = test::random_tensor({N, K}, 31, 0.05f);
    const size_t rb = quant_row_bytes(t, K);
    Tensor rows = Tensor::empty({N, int64_t(rb)}, DType::U8);
    Tensor decoded = Tensor::empty({N, K});
    for (int64_t n = 0; n < N; ++n) {
      quantize_row(t, w.data<float>() + n * K, rows.data<uint8_t>() + n * rb, K);
      dequantize_row(t, rows.data<uint8_t>() + n * rb, decoded.data<float>() + n * K, K);
    }
    const Tensor x = test::random_tensor({M, K}, 32);
    ScopedPrecision bf16(Precision::BF16);
    const Tensor got = ops::linear_quantized(x, rows, t, K);
    const Tensor exact = [&] {
      ScopedPrecision f32(Precision::F32);
      return ops::linear(x, decoded);
    }();
    const double err = test::rel_l2(got, exact);
    EXPECT_LT(err, 1e-2) << quant_type_name(t);
    EXPECT_GT(err, 1e-6) << quant_type_name(t) << ": the 8-bit activations should show";
  }
}

}  // namespace
}  // namespace meshdit::cpu
