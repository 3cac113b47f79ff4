// The CUDA backend's own checks: registration (listed exactly when a device is present), the caching
// allocator, copies between host and device (strided, dtype-converting) and linear against the CPU backend in
// both precisions. Every backend-parameterised test (ops_test, model_ops_test, conv_test, ...) also runs on
// CUDA when a device is present; without one (CI) these tests skip, saying why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "backend_test_util.h"
#include "core/allocator.h"
#include "core/fp8.h"
#include "core/tensor.h"
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/cuda_backend.h"
#endif

using namespace meshdit;

namespace {

TEST(CudaBackend, ListedExactlyWhenADeviceIsPresent) {
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  EXPECT_EQ(test::cuda_listed(), cuda::device_present());
  if (!cuda::device_present()) {
    EXPECT_TRUE(cuda::devices().empty());
    EXPECT_EQ(compiled_backends().size(), 1u);
  }
#else
  EXPECT_FALSE(test::cuda_listed());
  GTEST_SKIP() << "the CUDA backend is not compiled in";
#endif
}

TEST(CudaBackend, AllocatorReusesFreedBlocks) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  Allocator* a = allocator_for(Device::CUDA);
  ASSERT_NE(a, nullptr);
  EXPECT_STREQ(a->name(), "cuda-caching");
  void* p = a->allocate(3 << 20);
  ASSERT_NE(p, nullptr);
  a->deallocate(p, 3 << 20);
  const cuda::AllocatorStats before = cuda::allocator_stats();
  void* q = a->allocate((3 << 20) - 100);  // the same size class
  EXPECT_EQ(q, p);
  EXPECT_EQ(cuda::allocator_stats().reuses, before.reuses + 1);
  EXPECT_EQ(cuda::allocator_stats().driver_allocations, before.driver_allocations);
  a->deallocate(q, (3 << 20) - 100);
#endif
}

TEST(CudaBackend, CopiesRoundTripEveryDtype) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = test::random_tensor({5, 7, 3}, 7100);
  for (DType t : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor h = x.to(t);
    const Tensor d = ops::to_device(h, Device::CUDA);
    EXPECT_EQ(d.device(), Device::CUDA);
    const Tensor back = ops::to_device(d, Device::CPU);
    ASSERT_EQ(back.nbytes(), h.nbytes());
    EXPECT_EQ(std::memcmp(back.raw(), h.raw(), h.nbytes()), 0);
    // Converted on the device, then compared with the host's conversion bit for bit.
    const Tensor dc = ops::to_device(x, Device::CUDA).to(t);
    const Tensor hc = ops::to_device(dc, Device::CPU);
    EXPECT_EQ(std::memcmp(hc.raw(), h.raw(), h.nbytes()), 0);
  }
}

TEST(CudaBackend, StridedCopyMatchesTheHost) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = test::random_tensor({4, 6, 5}, 7101);
  const Tensor want = x.permute({2, 0, 1}).slice(1, 1, 3).contiguous();
  const Tensor got = ops::to_device(x, Device::CUDA).permute({2, 0, 1}).slice(1, 1, 3).contiguous();
  EXPECT_EQ(got.device(), Device::CUDA);
  const Tensor g = ops::to_device(got, Device::CPU);
  ASSERT_EQ(g.shape(), want.shape());
  EXPECT_EQ(std::memcmp(g.raw(), want.raw(), want.nbytes()), 0);
  // I64 -> F32 by value, and zeroing.
  const Tensor ids = Tensor::from_i64({3}, {1, -2, 40000});
  const std::vector<float> v = ops::to_device(ids, Device::CUDA).to(DType::F32).to_vector();
  EXPECT_EQ(v, (std::vector<float>{1.0f, -2.0f, 40000.0f}));
  const std::vector<float> z = Tensor::zeros({1000}, DType::F32, Device::CUDA).to_vector();
  for (float f : z) ASSERT_EQ(f, 0.0f);
}

// linear on CUDA against the CPU backend: f32 weights and bf16 weights, a bias and GELU, strided rows, in f32
// precision (float32 products on both, so within a few float32 ulps of each other times sqrt(K)) and in bf16
// precision (both round the operands to bf16 the same way; only the summation order differs).
TEST(CudaBackend, LinearMatchesTheCpuBackend) {
  SKIP_WITHOUT_CUDA();
  const int64_t M = 37, K = 96, N = 40;
  const Tensor xs = test::random_tensor({M, K + 8}, 7102);
  const Tensor x = xs.slice(1, 0, K);  // rows strided by K + 8
  const Tensor b = test::random_tensor({N}, 7104);
  for (DType wt : {DType::F32, DType::BF16}) {
    for (Precision p : {Precision::F32, Precision::BF16}) {
      for (Act act : {Act::None, Act::GeluTanh, Act::Relu}) {
        SCOPED_TRACE(std::string(dtype_name(wt)) + " weight, " + precision_name(p) + ", " + act_name(act));
        ScopedPrecision prec(p);
        const Tensor w = test::random_tensor({N, K}, 7103, 0.2f).to(wt);
        const std::vector<float> want = ops::linear(x, w, &b, act).to_vector();
        const Tensor xd = ops::to_device(xs, Device::CUDA).slice(1, 0, K);
        const Tensor wd = ops::place(w, Device::CUDA), bd = ops::place(b, Device::CUDA);
        const Tensor got = ops::linear(xd, wd, &bd, act);
        ASSERT_EQ(got.device(), Device::CUDA);
        const std::vector<float> g = got.to_vector();
        ASSERT_EQ(g.size(), want.size());
        const double tol = p == Precision::F32 ? 1e-5 : 1e-4;
        for (size_t i = 0; i < g.size(); ++i)
          ASSERT_NEAR(g[i], want[i], tol * (1.0 + std::fabs(want[i]))) << "element " << i;
      }
    }
  }
}

// layer_norm_modulate on CUDA against the CPU backend: rows wider than a block's threads (Flux's 3072, an odd
// 1001), with and without the affine, shift / scale strided chunks differing per batch. The statistics are
// float64 sums in another order, so the rounded mean and 1 / std may differ by an ulp: a few float32 ulps of
// the output's magnitude. (Fused against unfused on CUDA, bit for bit, is OpsModulate in ops_test.)
TEST(CudaBackend, LayerNormModulateMatchesTheCpuBackend) {
  SKIP_WITHOUT_CUDA();
  const int64_t B = 2, L = 5;
  for (const int64_t C : {int64_t(3072), int64_t(1001)}) {
    const Tensor x = ops::affine(test::random_tensor({B, L, C}, 7200, 2.0f), 1.0f, 0.5f);
    const Tensor emb = test::random_tensor({B, 3 * C}, 7201, 0.5f);
    const Tensor w = test::random_tensor({C}, 7202).to(DType::BF16), b = test::random_tensor({C}, 7203);
    const Tensor xd = ops::to_device(x, Device::CUDA), ed = ops::to_device(emb, Device::CUDA);
    const Tensor wd = ops::place(w, Device::CUDA), bd = ops::place(b, Device::CUDA);
    for (const bool affine : {false, true}) {
      SCOPED_TRACE("C=" + std::to_string(C) + (affine ? " affine" : " no affine"));
      const std::vector<float> want = ops::layer_norm_modulate(x, affine ? &w : nullptr, affine ? &b : nullptr, 1e-6f,
                                                               emb.chunk(3, 1)[2], emb.chunk(3, 1)[0])
                                          .to_vector();
      const Tensor got = ops::layer_norm_modulate(xd, affine ? &wd : nullptr, affine ? &bd : nullptr, 1e-6f,
                                                  ed.chunk(3, 1)[2], ed.chunk(3, 1)[0]);
      ASSERT_EQ(got.device(), Device::CUDA);
      const std::vector<float> g = ops::to_device(got, Device::CPU).to_vector();
      ASSERT_EQ(g.size(), want.size());
      for (size_t i = 0; i < g.size(); ++i)
        ASSERT_NEAR(g[i], want[i], 1e-5 * (1.0 + std::fabs(want[i]))) << "element " << i;
    }
  }
}

// FP8 precision's activation quantization on the device (an amax reduction, then the conversion) gives the host's
// bytes and scale exactly (core/fp8.h runs on both): ties, subnormals, a saturating value, strided rows, the
// zero padding past K.
TEST(CudaBackend, Fp8QuantizationMatchesTheHostBitForBit) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const int64_t M = 33, K = 50, ld = 64;
  Tensor xs = test::random_tensor({M, K + 3}, 7200);
  float* p = xs.f32();
  p[0] = 7.0f;                                         // the amax: scale 7 / 448 = 1/64, so values below are exact ties
  p[1] = 1.0625f / 64.0f;                              // a tie (1 + 1/16) after scaling
  p[2] = 1.5f * std::ldexp(1.0f, -9) / 64;             // a subnormal tie
  p[3] = -0.5f * std::ldexp(1.0f, -9) / 64;            // rounds to -0
  p[K + 3] = std::numeric_limits<float>::quiet_NaN();  // skipped by amax, NaN in e4m3
  const Tensor x = xs.slice(1, 0, K);
  const cuda::Fp8Quantized got = cuda::fp8_quantize(ops::to_device(xs, Device::CUDA).slice(1, 0, K), ld);
  float amax = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(p[m * (K + 3) + k]));
  EXPECT_EQ(amax, 7.0f);
  EXPECT_EQ(got.scale, e4m3_scale(amax));
  ASSERT_EQ(got.bytes.size(), size_t(M * ld));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < ld; ++k) {
      const uint8_t want = k < K ? quantize_e4m3(p[m * (K + 3) + k], got.scale) : 0;
      ASSERT_EQ(int(got.bytes[size_t(m * ld + k)]), int(want)) << "row " << m << " column " << k;
    }
#endif
}

// linear in FP8 on CUDA against the CPU's emulation: the same e4m3 values and scales, so only the summation order
// and the tensor cores' accumulator differ (float32 accumulation gives ~1e-7; the bound leaves room for Hopper's
// FP8 accumulator, which carries fewer bits between promotions to float32; a wrong scale or one wrongly rounded
// value costs 1e-3 or more). K = 50 is padded to 64 with zeros. A product cuBLASLt has no FP8 algorithm for (N = 17:
// an output row of 68 bytes) may run as BF16 instead: then it must match the CPU's BF16 and say so in fp8_stats.
TEST(CudaBackend, Fp8LinearMatchesTheCpuEmulation) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  struct Case {
    int64_t M, K, N;
    DType wt;
    Act act;
  };
  for (const Case& c : {Case{37, 96, 40, DType::F32, Act::None}, Case{64, 256, 128, DType::BF16, Act::GeluTanh},
                        Case{3, 64, 32, DType::BF16, Act::Relu}, Case{20, 50, 24, DType::F32, Act::None},
                        Case{5, 48, 17, DType::BF16, Act::None}}) {
    SCOPED_TRACE("M " + std::to_string(c.M) + " K " + std::to_string(c.K) + " N " + std::to_string(c.N) + " " +
                 dtype_name(c.wt) + " " + act_name(c.act));
    const Tensor xs = test::random_tensor({c.M, c.K + 8}, 7210);
    const Tensor x = xs.slice(1, 0, c.K);
    const Tensor w = test::random_tensor({c.N, c.K}, 7211, 0.2f).to(c.wt);
    const Tensor b = test::random_tensor({c.N}, 7212);
    const Tensor xd = ops::to_device(xs, Device::CUDA).slice(1, 0, c.K);
    const Tensor wd = ops::place(w, Device::CUDA), bd = ops::place(b, Device::CUDA);
    ScopedPrecision prec(Precision::FP8);
    const cuda::Fp8Stats before = cuda::fp8_stats();
    const std::vector<float> g = ops::linear(xd, wd, &bd, c.act).to_vector();
    const cuda::Fp8Stats after = cuda::fp8_stats();
    const bool fell_back = after.bf16_fallbacks > before.bf16_fallbacks;
    std::vector<float> want;
    if (fell_back) {
      EXPECT_EQ(c.N, 17) << "only the odd-width case may lack an FP8 algorithm on an H100/H200";
      ScopedPrecision bf16(Precision::BF16);
      want = ops::linear(x, w, &b, c.act).to_vector();
    } else {
      EXPECT_EQ(after.fp8_products, before.fp8_products + 1);
      want = ops::linear(x, w, &b, c.act).to_vector();
    }
    ASSERT_EQ(g.size(), want.size());
    double e = 0, n = 0, amax = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      e += (double(g[i]) - want[i]) * (double(g[i]) - want[i]);
      n += double(want[i]) * want[i];
      amax = std::max(amax, std::fabs(double(want[i])));
    }
    std::printf("fp8 linear %s: relative L2 against the CPU %.3e\n", fell_back ? "(bf16 fallback)" : "",
                std::sqrt(e / n));
    EXPECT_LT(std::sqrt(e / n), 1e-4);
    for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], want[i], 2e-4 * amax) << "element " << i;
  }
#endif
}

// The weight's e4m3 copy is made once and reused; freeing the weight drops it, so another weight allocated at the
// same address (the caching allocator hands the block straight back) is quantized anew, never read stale.
TEST(CudaBackend, Fp8WeightCacheNeverServesAFreedWeight) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const int64_t M = 16, K = 64, N = 32;
  const Tensor x = test::random_tensor({M, K}, 7220);
  const Tensor xd = ops::to_device(x, Device::CUDA);
  ScopedPrecision prec(Precision::FP8);
  const void* first_address = nullptr;
  for (unsigned seed : {7221u, 7222u}) {
    SCOPED_TRACE(seed);
    const Tensor w = test::random_tensor({N, K}, seed, 0.2f);
    const std::vector<float> want = ops::linear(x, w).to_vector();
    const cuda::Fp8Stats s0 = cuda::fp8_stats();
    {
      const Tensor wd = ops::place(w, Device::CUDA);
      if (!first_address)
        first_address = wd.raw();
      else
        std::printf("second weight %s the first's address\n", wd.raw() == first_address ? "at" : "not at");
      for (int rep = 0; rep < 2; ++rep) {
        const std::vector<float> g = ops::linear(xd, wd).to_vector();
        for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], want[i], 2e-4 * (1.0 + std::fabs(want[i])));
      }
      const cuda::Fp8Stats s1 = cuda::fp8_stats();
      EXPECT_EQ(s1.weights_quantized, s0.weights_quantized + 1) << "quantized once for both calls";
      EXPECT_EQ(s1.weights_cached, s0.weights_cached + 1);
    }
    EXPECT_EQ(cuda::fp8_stats().weights_cached, s0.weights_cached) << "freeing the weight drops its copy";
  }
#endif
}

}  // namespace
