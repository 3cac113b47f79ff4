// The CUDA conv2d's two paths (backend/cuda/conv.cu): cuDNN for symmetric padding, im2col + cuBLASLt for
// asymmetric padding and whatever cuDNN refuses, each against the CPU backend on VAE-like shapes, and which
// path a shape took (conv_counts). conv_test.cpp checks both paths against naive loops too, as it runs on
// every backend. Without a GPU only the cuDNN library check runs: dlopen, every entry point conv.cu uses,
// the version and the cnn sub-library, none of which needs a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/ops.h"
#include "backend_test_util.h"
#include "core/tensor.h"
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/conv_path.h"
#endif

using namespace meshdit;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

#if defined(MESHDIT_HAVE_CUDA_BACKEND)
// The helpers serve the GPU tests only.
bool through_cudnn() { return std::string(cuda::conv_library()).starts_with("cuDNN "); }

Conv2dParams pads(int s, int top, int left, int bottom, int right) {
  Conv2dParams p;
  p.stride_h = p.stride_w = s;
  p.pad_top = top, p.pad_left = left, p.pad_bottom = bottom, p.pad_right = right;
  return p;
}

Tensor abs_of(const Tensor& t) {
  std::vector<float> v = t.to(DType::F32).to_vector();
  for (float& f : v) f = std::fabs(f);
  return Tensor::from_f32(t.shape(), v);
}

struct Case {
  int64_t B, C, H, W, O, k;
  Conv2dParams p;
  DType wdtype;
  bool bias;
  const char* name;
};

// conv2d of x (a view of `x_storage` on the GPU when given, to test pointer offsets) on CUDA against the CPU
// backend. Both are float32 sums of float32 products in different orders: each is within a few float32
// epsilons of the exact sum times its sum of |terms| (the CPU's conv of |x| and |w|, plus |b|), so they
// are within twice that of each other.
void check_against_cpu(const Case& c, const Tensor& x) {
  SCOPED_TRACE(c.name);
  const Tensor w = test::random_tensor({c.O, c.C, c.k, c.k}, 8202, 0.3f).to(c.wdtype);
  const Tensor b = test::random_tensor({c.O}, 8203).to(c.wdtype);
  const Tensor* bp = c.bias ? &b : nullptr;
  const Tensor xh = ops::to_device(x, Device::CPU).contiguous();
  const std::vector<float> want = ops::conv2d(xh, w, bp, c.p).to_vector();
  const Tensor babs = abs_of(b);
  const std::vector<float> mag = ops::conv2d(abs_of(xh), abs_of(w), c.bias ? &babs : nullptr, c.p).to_vector();
  const Tensor wd = ops::place(w, Device::CUDA), bd = ops::place(b, Device::CUDA);
  const Tensor got = ops::conv2d(x, wd, c.bias ? &bd : nullptr, c.p);
  ASSERT_EQ(got.device(), Device::CUDA);
  const std::vector<float> g = test::host_values(got);
  ASSERT_EQ(g.size(), want.size());
  test::Vec ref(want.begin(), want.end()), tol(want.size());
  for (size_t i = 0; i < tol.size(); ++i) tol[i] = 64 * test::kEps32 * double(mag[i]) + 1e-30;
  EXPECT_TRUE(test::all_close(g, ref, tol));
}

// The cases cuDNN takes: symmetric padding. The VAEs' shapes in small: a 3-channel image in, 3x3 stride 1 and
// (symmetric) stride 2, 1x1 shortcuts, channel counts that are not multiples of 8, batches of 2 and 3.
const Case kSymmetric[] = {
    {1, 3, 33, 31, 32, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "image in: 3 channels, 3x3 pad 1"},
    {2, 12, 17, 19, 20, 3, pads(1, 1, 1, 1, 1), DType::BF16, true, "batch 2, 12 channels, bf16 weights"},
    {3, 5, 9, 14, 7, 3, pads(2, 1, 1, 1, 1), DType::F32, false, "batch 3, stride 2 pad 1, no bias"},
    {2, 24, 11, 13, 40, 1, pads(1, 0, 0, 0, 0), DType::F32, true, "1x1 shortcut"},
    {1, 10, 12, 12, 6, 1, pads(2, 0, 0, 0, 0), DType::F16, false, "1x1 stride 2, f16 weights"},
    {1, 7, 8, 9, 5, 3, pads(1, 0, 0, 0, 0), DType::F32, true, "3x3 unpadded"},
    {1, 128, 64, 48, 128, 3, pads(1, 1, 1, 1, 1), DType::BF16, true, "a decoder block: 128 channels"},
};

#endif  // MESHDIT_HAVE_CUDA_BACKEND

TEST(CudaConv, CudnnLibraryLoadsWithoutADevice) {
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  if (kSanitized) GTEST_SKIP() << "cuDNN's own allocations are not this test's to leak-check";
  const std::string lib = cuda::cudnn_library();
  std::printf("cuDNN library: %s\n", lib.c_str());
  if (lib.starts_with("built without") || lib.starts_with("cuDNN off") || lib.starts_with("cuDNN not found"))
    GTEST_SKIP() << lib;
  // Found: every entry point resolves, the version is 9 and the cnn sub-library loads.
  EXPECT_TRUE(lib.starts_with("cuDNN 9.")) << lib;
#else
  GTEST_SKIP() << "the CUDA backend is not compiled in";
#endif
}

TEST(CudaConv, SymmetricPaddingMatchesTheCpuBackend) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const bool dnn = through_cudnn();
  if (!dnn) std::printf("note: conv2d runs as %s: the im2col path is what is checked here\n", cuda::conv_library());
  for (const Case& c : kSymmetric) {
    const cuda::ConvCounts before = cuda::conv_counts();
    check_against_cpu(c, ops::to_device(test::random_tensor({c.B, c.C, c.H, c.W}, 8201), Device::CUDA));
    const cuda::ConvCounts after = cuda::conv_counts();
    // cuDNN takes every one of these shapes (a refusal would be noted on stderr and run as im2col).
    if (dnn) {
      EXPECT_EQ(after.cudnn, before.cudnn + 1) << c.name;
    }
    EXPECT_EQ(after.cudnn + after.im2col, before.cudnn + before.im2col + 1) << c.name;
  }
#endif
}

// Downsample2D's F.pad(0, 1, 0, 1) with stride 2, and a row band's halo (padding on one side only): cuDNN's
// legacy API cannot say either, so they run as im2col + cuBLASLt.
TEST(CudaConv, AsymmetricPaddingFallsBackToIm2col) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const Case cases[] = {
      {2, 6, 16, 15, 8, 3, pads(2, 0, 0, 1, 1), DType::F32, true, "Downsample2D pad (0, 1, 0, 1), stride 2"},
      {1, 5, 7, 11, 6, 3, pads(1, 0, 1, 1, 1), DType::BF16, true, "band: halo above, padding below"},
      {1, 3, 6, 8, 4, 3, pads(1, 1, 2, 1, 0), DType::F32, false, "asymmetric in width only"},
  };
  for (const Case& c : cases) {
    const cuda::ConvCounts before = cuda::conv_counts();
    check_against_cpu(c, ops::to_device(test::random_tensor({c.B, c.C, c.H, c.W}, 8204), Device::CUDA));
    const cuda::ConvCounts after = cuda::conv_counts();
    EXPECT_EQ(after.cudnn, before.cudnn) << c.name;
    EXPECT_EQ(after.im2col, before.im2col + 1) << c.name;
  }
#endif
}

// A batch slice of a larger tensor is contiguous but starts 4-byte aligned only (an odd image size), as the
// causal 3-D conv's frame ranges do: whichever path takes it (cuDNN, or im2col after cuDNN refuses the
// pointer), the result is the CPU's.
TEST(CudaConv, OddlyAlignedBatchSlice) {
  SKIP_WITHOUT_CUDA();
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const Case c{2, 3, 5, 7, 4, 3, pads(1, 1, 1, 1, 1), DType::F32, true, "batch slice at an odd offset"};
  const Tensor whole = ops::to_device(test::random_tensor({3, c.C, c.H, c.W}, 8205), Device::CUDA);
  const Tensor x = whole.slice(0, 1, 3);
  ASSERT_TRUE(x.is_contiguous());
  const cuda::ConvCounts before = cuda::conv_counts();
  check_against_cpu(c, x);
  const cuda::ConvCounts after = cuda::conv_counts();
  EXPECT_EQ(after.cudnn + after.im2col, before.cudnn + before.im2col + 1);
  // Again: the plan (or the refusal) kept for this shape and alignment gives the same answer.
  check_against_cpu(c, x);
#endif
}

}  // namespace
