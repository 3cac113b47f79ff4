// The shared causal 3-D conv in replicate mode (Mochi's CogVideoXCausalConv3d, pad_mode "replicate")
// against a direct nested-loop Conv3d over the whole sequence padded with copies of the first frame and of
// the edge rows and columns: whole at once, and in chunks carrying the cache. (The zero-padded mode is
// tested with the Wan VAE, tests/models/autoencoder_kl_wan_test.cpp.)
#include "layers/causal_conv3d.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "io/safetensors.h"

using namespace meshdit;

namespace {

// nn.Conv3d (stride 1) on x [B, C, T, H, W] (float64 sums) after F.pad(mode="replicate") with kt - 1 frames
// in front and (k - 1) / 2 rows and columns around: w [O, C, kt, k, k], bias [O] -> [B, O, T, H, W].
std::vector<float> replicate_conv3d_reference(const std::vector<float>& x, const std::vector<float>& w,
                                              const std::vector<float>& bias, int64_t B, int64_t C, int64_t T,
                                              int64_t H, int64_t W, int64_t O, int64_t kt, int64_t k) {
  const int64_t p = (k - 1) / 2;
  auto clampi = [](int64_t v, int64_t n) { return std::min(std::max<int64_t>(v, 0), n - 1); };
  std::vector<float> y(size_t(B * O * T * H * W));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < W; ++j) {
            double s = bias[size_t(o)];
            for (int64_t c = 0; c < C; ++c)
              for (int64_t dt = 0; dt < kt; ++dt) {
                const int64_t tt = clampi(t + dt - (kt - 1), T);
                for (int64_t di = 0; di < k; ++di)
                  for (int64_t dj = 0; dj < k; ++dj) {
                    const int64_t ii = clampi(i + di - p, H), jj = clampi(j + dj - p, W);
                    s += double(x[size_t((((b * C + c) * T + tt) * H + ii) * W + jj)]) *
                         w[size_t((((o * C + c) * kt + dt) * k + di) * k + dj)];
                  }
              }
            y[size_t((((b * O + o) * T + t) * H + i) * W + j)] = float(s);
          }
  return y;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// [B, C, T, H, W] <-> the frame-major [T, B, C, H, W].
Tensor frame_major(const Tensor& x) { return x.permute({2, 0, 1, 3, 4}).contiguous(); }
Tensor channel_major(const Tensor& x) { return x.permute({1, 2, 0, 3, 4}).contiguous(); }

TEST(CausalConv3dReplicate, WholeAndChunkedEqualTheReplicatePaddedConv3d) {
  test::TempDir dir;
  const int64_t B = 2, C = 3, O = 4, T = 7, H = 5, W = 4, kt = 3, k = 3;
  const Tensor w = test::random_tensor({O, C, kt, k, k}, 11, 0.3f), b = test::random_tensor({O}, 12, 0.3f);
  const std::string path = dir.str() + "/conv.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"conv.weight", w}, {"conv.bias", b}}).ok());
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok());
  auto conv = CausalConv3d::load_replicate(*ck, "conv", C, O, kt, k);
  ASSERT_TRUE(conv.ok()) << conv.error().message;
  const Tensor x = test::random_tensor({B, C, T, H, W}, 7);
  const auto ref = replicate_conv3d_reference(x.to_vector(), w.to_vector(), b.to_vector(), B, C, T, H, W, O, kt, k);

  EXPECT_LT(max_abs_diff(channel_major((*conv)(frame_major(x))).to_vector(), ref), 1e-5);
  // Chunks of 1, 1, 2, 3 frames: the first two leave the cache shorter than the padding (the first frame's
  // copies fill the rest).
  CausalCacheSlot slot;
  std::vector<Tensor> parts;
  const int64_t bounds[] = {0, 1, 2, 4, 7};
  for (int i = 0; i < 4; ++i)
    parts.push_back(conv->cached(frame_major(x.slice(2, bounds[i], bounds[i + 1]).contiguous()), slot, nullptr));
  EXPECT_LT(max_abs_diff(channel_major(concat(parts, 0)).to_vector(), ref), 1e-5);
  EXPECT_EQ(slot.frames.size(0), kCausalCacheT);
}

TEST(CausalConv3dReplicate, EvenKernelIsAnError) {
  test::TempDir dir;
  const std::string path = dir.str() + "/conv.safetensors";
  ASSERT_TRUE(
      save_safetensors(path, {{"conv.weight", Tensor::zeros({2, 2, 3, 2, 2})}, {"conv.bias", Tensor::zeros({2})}})
          .ok());
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok());
  auto conv = CausalConv3d::load_replicate(*ck, "conv", 2, 2, 3, 2);
  ASSERT_FALSE(conv.ok());
  EXPECT_NE(conv.error().message.find("conv"), std::string::npos) << conv.error().message;
}

}  // namespace
