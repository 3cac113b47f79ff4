// What is specific to Qwen-Image's transformer: QwenEmbedRope's positions (text on the diagonal after the
// centred grid) and the img_shapes call argument.
#include <gtest/gtest.h>

#include <cmath>

#include "models/registry.h"
#include "models/transformers/qwenimage.h"

using namespace meshdit;

namespace {

// The angle of pair j of an axis of `dim` columns at position p, in double.
double angle(int64_t p, int j, int dim) { return double(p) / std::pow(10000.0, double(2 * j) / dim); }

TEST(QwenImage, RopePositionsCentreTheGridAndPutTextAfterIt) {
  const std::vector<int> axes{4, 6, 6};
  const int64_t h = 3, w = 5, L = 2, D = 16;
  const RopeTables t = qwenimage_rope(axes, 1, h, w, L);
  ASSERT_EQ(t.cos.shape(), (Shape{L + h * w, D}));
  const std::vector<float> c = t.cos.to_vector(), s = t.sin.to_vector();
  auto expect_row = [&](int64_t row, const int64_t pos[3]) {
    int col = 0;
    for (int a = 0; a < 3; ++a)
      for (int j = 0; j < axes[size_t(a)] / 2; ++j, col += 2)
        for (int k = 0; k < 2; ++k) {
          const double ang = angle(pos[a], j, axes[size_t(a)]);
          EXPECT_NEAR(c[size_t(row * D + col + k)], std::cos(ang), 1e-5) << "row " << row << " col " << col + k;
          EXPECT_NEAR(s[size_t(row * D + col + k)], std::sin(ang), 1e-5) << "row " << row << " col " << col + k;
        }
  };
  // max(h // 2, w // 2) = 2: text tokens sit at 2, 3 on every axis.
  for (int64_t i = 0; i < L; ++i) {
    const int64_t p[3] = {2 + i, 2 + i, 2 + i};
    expect_row(i, p);
  }
  // Rows -2..0 (h - h // 2 = 2 negative), columns -3..1.
  for (int64_t i = 0; i < h; ++i)
    for (int64_t k = 0; k < w; ++k) {
      const int64_t p[3] = {0, i - 2, k - 3};
      expect_row(L + i * w + k, p);
    }
}

TEST(QwenImage, ImgShapesComeFromTheCallArguments) {
  const TransformerArch* a = find_transformer_arch("QwenImageTransformer2DModel");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->call_config);
  const std::any base = QwenImageConfig{};
  auto shape = a->call_config(base, Json::parse(R"({"img_shapes": [[[1, 3, 5]], [[1, 3, 5]]]})"));
  ASSERT_TRUE(shape.ok()) << shape.error().message;
  EXPECT_EQ(std::any_cast<const QwenImageConfig&>(*shape).img_shape, (std::array<int64_t, 3>{1, 3, 5}));
  for (const char* bad : {R"({"img_shapes": [1, 3, 5]})", R"({"img_shapes": [[[1, 0, 5]]]})",
                          R"({"img_shapes": [[[1, 3, 5], [1, 3, 5]]]})"}) {
    auto r = a->call_config(base, Json::parse(bad));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("img_shapes"), std::string::npos) << r.error().message;
  }
}

}  // namespace
