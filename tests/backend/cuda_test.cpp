// The CUDA backend's own checks: registration (listed exactly when a device is present), the caching
// allocator, copies between host and device (strided, dtype-converting) and linear against the CPU backend in
// both precisions. Every backend-parameterised test (ops_test, model_ops_test, conv_test, ...) also runs on
// CUDA when a device is present; without one (CI) these tests skip, saying why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "backend_test_util.h"
#include "core/allocator.h"
#include "core/tensor.h"
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/cuda_backend.h"
#endif

using namespace meshdit;

namespace {

bool cuda_listed() { return find_backend(Device::CUDA) != nullptr; }

#define SKIP_WITHOUT_CUDA()                                                                                 \
  do {                                                                                                      \
    if (!cuda_listed())                                                                                     \
      GTEST_SKIP() << "no CUDA device (or the CUDA backend is not compiled in): the CUDA tests need a GPU"; \
  } while (0)

TEST(CudaBackend, ListedExactlyWhenADeviceIsPresent) {
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  EXPECT_EQ(cuda_listed(), cuda::device_present());
  if (!cuda::device_present()) {
    EXPECT_TRUE(cuda::devices().empty());
    EXPECT_EQ(compiled_backends().size(), 1u);
  }
#else
  EXPECT_FALSE(cuda_listed());
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

}  // namespace
