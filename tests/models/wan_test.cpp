// What is specific to Wan's transformer: WanRotaryPosEmbed's 3-axis split of head_dim, the Conv3d patch
// layout in and out, the config's refusals and the forward's input errors.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "models/transformers/wan.h"

using namespace meshdit;

namespace {

std::string fixture() { return test::fixtures_dir() + "/wan22_t2v_transformer"; }

TEST(Wan, RopeAxesSplitHeadDimAsTheReference) {
  WanConfig c;
  EXPECT_EQ(c.rope_axes(), (std::vector<int>{44, 42, 42}));  // Wan2.2's 128
  c.attention_head_dim = 16;
  EXPECT_EQ(c.rope_axes(), (std::vector<int>{8, 4, 4}));
}

// Every entry against get_1d_rotary_pos_embed's formula in double: the frame index on the t columns, the row
// on the h columns, the column on the w columns, each pair repeated.
TEST(Wan, RopeTablesAreTheDirectComputation) {
  for (int64_t hd : {16, 128}) {
    WanConfig c;
    c.attention_head_dim = hd;
    const int64_t F = 2, H = 3, W = 5, N = F * H * W;
    const RopeTables t = wan_rope(c, F, H, W);
    ASSERT_EQ(t.cos.shape(), (Shape{N, hd}));
    ASSERT_EQ(t.sin.shape(), (Shape{N, hd}));
    const std::vector<float> cs = t.cos.to_vector(), sn = t.sin.to_vector();
    const std::vector<int> axes = c.rope_axes();
    for (int64_t f = 0; f < F; ++f)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t k = 0; k < W; ++k) {
          const int64_t row = (f * H + i) * W + k, pos[3] = {f, i, k};
          int64_t col = 0;
          for (int a = 0; a < 3; ++a) {
            const int dim = axes[size_t(a)];
            for (int j = 0; j < dim / 2; ++j, col += 2) {
              const double ang = double(pos[a]) * (1.0 / std::pow(10000.0, double(2 * j) / dim));
              for (int e = 0; e < 2; ++e) {
                EXPECT_NEAR(cs[size_t(row * hd + col + e)], std::cos(ang), 1.2e-7) << "hd " << hd << " row " << row;
                EXPECT_NEAR(sn[size_t(row * hd + col + e)], std::sin(ang), 1.2e-7) << "hd " << hd << " row " << row;
              }
            }
          }
        }
    // A sequence-parallel rank builds only its rows: the same values.
    const RopeTables part = wan_rope(c, F, H, W, Range{7, 19});
    EXPECT_EQ(part.cos.to_vector(), t.cos.slice(0, 7, 19).contiguous().to_vector());
    EXPECT_EQ(part.sin.to_vector(), t.sin.slice(0, 7, 19).contiguous().to_vector());
  }
}

// patchify puts patch (f, h, w) of the grid at token (f H + h) W + w with its values channel-major (c, t, i, j),
// as the Conv3d weight [dim, C, pt, ph, pw] flattens; unpatchify reads proj_out's (t, i, j, c) order back.
TEST(Wan, PatchifyAndUnpatchifyFollowTheConvAndTheReferencesPermute) {
  for (const std::vector<int>& p : {std::vector<int>{1, 2, 2}, std::vector<int>{2, 2, 3}}) {
    const int64_t B = 2, C = 3, f = 2, h = 3, w = 2;
    const int64_t pt = p[0], ph = p[1], pw = p[2], F = f * pt, H = h * ph, W = w * pw, V = C * pt * ph * pw;
    const Tensor x = test::random_tensor({B, C, F, H, W}, 7);
    const Tensor tok = wan_patchify(x, p);
    ASSERT_EQ(tok.shape(), (Shape{B, f * h * w, V}));
    const std::vector<float> xv = x.to_vector(), tv = tok.to_vector();
    auto at = [&](int64_t b, int64_t c, int64_t t, int64_t i, int64_t j) {
      return xv[size_t((((b * C + c) * F + t) * H + i) * W + j)];
    };
    // The same values re-laid as proj_out's (t, i, j, c) patches: unpatchify of them must be x again.
    std::vector<float> out(size_t(B * f * h * w * V));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t gf = 0; gf < f; ++gf)
        for (int64_t gh = 0; gh < h; ++gh)
          for (int64_t gw = 0; gw < w; ++gw)
            for (int64_t c = 0; c < C; ++c)
              for (int64_t t = 0; t < pt; ++t)
                for (int64_t i = 0; i < ph; ++i)
                  for (int64_t j = 0; j < pw; ++j) {
                    const int64_t n = (gf * h + gh) * w + gw;
                    const float v = at(b, c, gf * pt + t, gh * ph + i, gw * pw + j);
                    ASSERT_EQ(tv[size_t((b * f * h * w + n) * V + ((c * pt + t) * ph + i) * pw + j)], v);
                    out[size_t((b * f * h * w + n) * V + ((t * ph + i) * pw + j) * C + c)] = v;
                  }
    const Tensor back = wan_unpatchify(Tensor::from_f32({B, f * h * w, V}, out), f, h, w, p);
    ASSERT_EQ(back.shape(), x.shape());
    EXPECT_EQ(back.to_vector(), xv);
  }
}

TEST(Wan, ConfigReadsTheFixtureAndTheDefaultsAreTheRealModel) {
  auto c = WanConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->num_attention_heads, 2);
  EXPECT_EQ(c->attention_head_dim, 16);
  EXPECT_EQ(c->text_dim, 40);
  EXPECT_EQ(c->ffn_dim, 64);
  EXPECT_FLOAT_EQ(c->eps, 1e-6f);
  EXPECT_EQ(c->rope_max_seq_len, 1024);
  test::TempDir d;
  d.write("config.json", R"({"_class_name": "WanTransformer3DModel", "out_channels": null, "image_dim": null})");
  auto def = WanConfig::from_json(d.str() + "/config.json");
  ASSERT_TRUE(def.ok()) << def.error().message;
  EXPECT_EQ(def->inner_dim(), 5120);
  EXPECT_EQ(def->num_layers, 40);
  EXPECT_EQ(def->out_channels, 16);  // null: in_channels
}

TEST(Wan, ConfigErrorsNameTheKey) {
  const std::pair<const char*, const char*> bad[] = {
      {R"({"qk_norm": "rms_norm"})", "qk_norm"},
      {R"({"image_dim": 1280})", "image-to-video"},
      {R"({"added_kv_proj_dim": 5120})", "image-to-video"},
      {R"({"attention_head_dim": 15})", "attention_head_dim"},
      {R"({"attention_head_dim": 4})", "attention_head_dim"},
      {R"({"patch_size": [2, 2]})", "patch_size"},
      {R"({"patch_size": [1, 0, 2]})", "patch_size"},
      {R"({"num_attention_heads": 0})", "num_attention_heads"},
      {R"({"eps": 0})", "eps"},
      {R"({"rope_max_seq_len": 0})", "rope_max_seq_len"},
  };
  for (const auto& [text, want] : bad) {
    test::TempDir d;
    d.write("config.json", text);
    auto c = WanConfig::from_json(d.str() + "/config.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.error().message.find(want), std::string::npos) << c.error().message;
    EXPECT_NE(c.error().message.find("config.json"), std::string::npos) << c.error().message;
  }
}

TEST(Wan, CallArgumentsOtherThanTextLengthsAreRefused) {
  const TransformerArch* a = find_transformer_arch("WanTransformer3DModel");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->call_config && a->load);
  const std::any base = WanConfig{};
  EXPECT_TRUE(a->call_config(base, Json::parse(R"({"text_lengths": [12, 7]})")).ok());
  auto r = a->call_config(base, Json::parse(R"({"attention_kwargs": {}})"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("attention_kwargs"), std::string::npos) << r.error().message;
}

// Inputs that do not fit the model are errors naming the tensor, never a crash.
TEST(Wan, ForwardInputErrorsNameTheTensor) {
  auto cfg = WanConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto m = WanTransformer::load(*ck, *cfg);
  ASSERT_TRUE(m.ok()) << m.error().message;
  auto in = SafetensorsFile::open(fixture() + "/inputs.safetensors");
  ASSERT_TRUE(in.ok());
  const Tensor x = (*in)->get("hidden_states").value(), t = (*in)->get("timestep").value(),
               e = (*in)->get("encoder_hidden_states").value();
  auto expect_error = [&](const Result<Tensor>& r, const std::string& want) {
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.error().message.find(want), std::string::npos) << r.error().message;
  };
  EXPECT_TRUE(m->forward(x, t, e).ok());
  expect_error(m->forward(x.select(2, 0), t, e), "hidden_states");
  expect_error(m->forward(x.slice(3, 0, 5), t, e), "multiples of the patch");
  expect_error(m->forward(x, t, e.slice(2, 0, 39)), "encoder_hidden_states");
  expect_error(m->forward(x, t.slice(0, 0, 1), e), "timestep");
  expect_error(m->forward(x.slice(1, 0, 8), t, e), "hidden_states");
  WanConfig small = *cfg;
  small.rope_max_seq_len = 2;  // the fixture's grid is 3 x 3 x 5
  auto m2 = WanTransformer::load(*ck, small);
  ASSERT_TRUE(m2.ok());
  expect_error(m2->forward(x, t, e), "rope_max_seq_len");
}

// Under TP a rank needs whole heads; the loader says so before taking any weight.
TEST(Wan, HeadsNotDivisibleByTpIsAnError) {
  auto cfg = WanConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  const Checkpoint meta = Checkpoint::meta(DType::BF16);
  auto tp = test::geometry_comm(0, 4);
  const ParallelContext par{tp.get(), nullptr, SpMode::Ring};
  auto m = WanTransformer::load(meta, *cfg, &par);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("2 attention heads are not divisible by tp=4"), std::string::npos)
      << m.error().message;
}

}  // namespace
