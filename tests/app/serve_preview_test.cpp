// The latent preview: Flux's packed latents and the same latents unpacked give one picture; other layouts
// are refused with their shape.
#include "app/serve_preview.h"

#include <gtest/gtest.h>

#include <set>

#include "../test_util.h"

using namespace meshdit;

TEST(ServePreview, PackedAndPlanarLatentsGiveOnePicture) {
  const int64_t W = 64, H = 32, h = H / 8, w = W / 8, C = 16;
  const Tensor planar = test::random_tensor({1, C, h, w}, 5);
  // diffusers' _pack_latents: [B, C, h/2, 2, w/2, 2] -> [B, h/2, w/2, C, 2, 2] -> [B, (h/2)(w/2), 4C].
  const Tensor packed = planar.reshape({1, C, h / 2, 2, w / 2, 2})
                            .permute({0, 2, 4, 1, 3, 5})
                            .contiguous()
                            .reshape({1, (h / 2) * (w / 2), C * 4});
  int pw = 0, ph = 0, qw = 0, qh = 0;
  auto a = latent_preview_rgb(planar, W, H, &pw, &ph);
  auto b = latent_preview_rgb(packed, W, H, &qw, &qh);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(pw, w);
  EXPECT_EQ(ph, h);
  EXPECT_EQ(qw, w);
  EXPECT_EQ(*a, *b);
  std::set<uint8_t> values(a->begin(), a->end());
  EXPECT_GT(values.size(), 10u) << "a flat preview";
  auto png = latent_preview_png(packed, W, H);
  ASSERT_TRUE(png.ok());
  EXPECT_EQ((*png)[1], 'P');
}

TEST(ServePreview, OtherLayoutsAreRefusedWithTheirShape) {
  int w = 0, h = 0;
  auto r = latent_preview_rgb(test::random_tensor({1, 4, 8, 8}, 1), 64, 64, &w, &h);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("[1, 4, 8, 8]"), std::string::npos) << r.error().message;
  EXPECT_FALSE(latent_preview_rgb(test::random_tensor({1, 10, 64}, 1), 64, 64, &w, &h).ok());
}
