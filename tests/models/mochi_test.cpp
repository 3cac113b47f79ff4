// What is specific to Mochi's transformer and the fixture does not pin: MochiRoPE's per-head tables (and the
// slices a TP or SP rank builds), masked text behaving as dropped text, the config's refusals, a missing tensor,
// the forward's input errors and the sizes `plan` works from.
#include "models/transformers/mochi.h"

#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/registry.h"

using namespace meshdit;

namespace {

std::string fixture() { return test::fixtures_dir() + "/mochi_transformer"; }

struct Inputs {
  Tensor x, e, t, mask;
};

Inputs fixture_inputs() {
  auto in = SafetensorsFile::open(fixture() + "/inputs.safetensors");
  EXPECT_TRUE(in.ok());
  return {(*in)->get("hidden_states").value(), (*in)->get("encoder_hidden_states").value(),
          (*in)->get("timestep").value(), (*in)->get("encoder_attention_mask").value()};
}

Result<MochiTransformer> fixture_model() {
  MD_TRY(MochiConfig c, MochiConfig::from_json(fixture() + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors"));
  return MochiTransformer::load(ck, c);
}

// Every entry against MochiRoPE's formula in double: positions (frame, centred row, centred column) scaled to a
// 192 x 192 area, angle = pos . pos_frequencies[:, head, pair], both columns of a pair alike; text rows identity.
TEST(Mochi, RopeTablesAreTheDirectComputationPerHead) {
  const int64_t H = 3, half = 4, hd = 2 * half, F = 2, h = 3, w = 5, N = F * h * w, L = 2;
  const Tensor freqs = test::random_tensor({3, H, half}, 11, 0.5f);
  const std::vector<float> fv = freqs.to_vector();
  const RopeTables t = mochi_rope(freqs, h, w, Range{0, N}, Range{0, H}, L, Device::CPU);
  ASSERT_EQ(t.cos.shape(), (Shape{N + L, H * hd}));
  ASSERT_EQ(t.sin.shape(), (Shape{N + L, H * hd}));
  const std::vector<float> cs = t.cos.to_vector(), sn = t.sin.to_vector();
  const double s = std::sqrt(192.0 * 192.0 / double(h * w));
  for (int64_t n = 0; n < N; ++n) {
    const double pos[3] = {double(n / (h * w)), (double(n / w % h) + 0.5 - h / 2.0) * s,
                           (double(n % w) + 0.5 - w / 2.0) * s};
    for (int64_t head = 0; head < H; ++head)
      for (int64_t j = 0; j < half; ++j) {
        double ang = 0, mag = 0;
        for (int a = 0; a < 3; ++a) {
          ang += pos[a] * fv[size_t((a * H + head) * half + j)];
          mag += std::fabs(pos[a] * fv[size_t((a * H + head) * half + j)]);
        }
        // The angle is a float32 sum of float32 products, as the reference's: a few ulps of its terms.
        const double tol = 1e-6 + 4 * 6e-8 * mag;
        for (int e = 0; e < 2; ++e) {
          const size_t at = size_t(n * H * hd + head * hd + 2 * j + e);
          EXPECT_NEAR(cs[at], std::cos(ang), tol) << "token " << n << " head " << head;
          EXPECT_NEAR(sn[at], std::sin(ang), tol) << "token " << n << " head " << head;
        }
      }
  }
  for (int64_t r = N; r < N + L; ++r)
    for (int64_t c = 0; c < H * hd; ++c) {
      EXPECT_EQ(cs[size_t(r * H * hd + c)], 1.0f);
      EXPECT_EQ(sn[size_t(r * H * hd + c)], 0.0f);
    }
  // A TP rank's heads are its columns; an SP rank's tokens are its rows (text rows after them): the same values.
  const RopeTables head1 = mochi_rope(freqs, h, w, Range{0, N}, Range{1, 2}, L, Device::CPU);
  EXPECT_EQ(head1.cos.to_vector(), t.cos.slice(1, hd, 2 * hd).contiguous().to_vector());
  EXPECT_EQ(head1.sin.to_vector(), t.sin.slice(1, hd, 2 * hd).contiguous().to_vector());
  const RopeTables part = mochi_rope(freqs, h, w, Range{7, 19}, Range{0, H}, L, Device::CPU);
  const Tensor want = concat({t.cos.slice(0, 7, 19), t.cos.slice(0, N, N + L)}, 0);
  EXPECT_EQ(part.cos.to_vector(), want.contiguous().to_vector());
}

// The reference drops padded text tokens from the attention (and the pooler): whatever the padding holds, and
// however much of it there is, the output is the same.
TEST(Mochi, MaskedTextIsDroppedText) {
  auto m = fixture_model();
  ASSERT_TRUE(m.ok()) << m.error().message;
  const Inputs in = fixture_inputs();
  // Sample 1 has 5 of 8 valid tokens (text_lengths [8, 5]).
  auto base = m->forward(in.x, in.e, in.t, in.mask);
  ASSERT_TRUE(base.ok()) << base.error().message;
  std::vector<float> ev = in.e.to_vector();
  const int64_t L = in.e.size(1), T = in.e.size(2);
  for (int64_t l = 5; l < L; ++l)
    for (int64_t c = 0; c < T; ++c) ev[size_t((L + l) * T + c)] = 100.0f + float(c);
  auto noisy = m->forward(in.x, Tensor::from_f32(in.e.shape(), ev), in.t, in.mask);
  ASSERT_TRUE(noisy.ok()) << noisy.error().message;
  EXPECT_EQ(noisy->to_vector(), base->to_vector());
  // Sample 1 alone with its 5 tokens and no padding: the same video within float32 rounding.
  auto alone = m->forward(in.x.slice(0, 1, 2), in.e.slice(0, 1, 2).slice(1, 0, 5), in.t.slice(0, 1, 2),
                          in.mask.slice(0, 1, 2).slice(1, 0, 5).contiguous());
  ASSERT_TRUE(alone.ok()) << alone.error().message;
  const std::vector<float> a = alone->to_vector(), b = base->slice(0, 1, 2).contiguous().to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 5e-5) << i;
}

TEST(Mochi, ConfigReadsTheFixtureAndTheDefaultsAreTheRealModel) {
  auto c = MochiConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->inner_dim(), 32);
  EXPECT_EQ(c->pooled_projection_dim, 24);
  EXPECT_EQ(c->text_embed_dim, 40);
  EXPECT_EQ(c->out_channels, 12);  // null: in_channels
  EXPECT_EQ(c->ff_inner_dim(), 85);
  EXPECT_EQ(c->ff_context_inner_dim(), 64);
  const MochiConfig real;
  EXPECT_EQ(real.inner_dim(), 3072);
  EXPECT_EQ(real.ff_inner_dim(), 8192);
  EXPECT_EQ(real.ff_context_inner_dim(), 4096);
  EXPECT_EQ(real.num_layers, 48);
}

TEST(Mochi, ConfigErrorsNameTheKey) {
  const std::pair<const char*, const char*> bad[] = {
      {R"({"qk_norm": "layer_norm"})", "qk_norm"},
      {R"({"activation_fn": "gelu"})", "activation_fn"},
      {R"({"attention_head_dim": 15})", "attention_head_dim"},
      {R"({"num_attention_heads": 0})", "num_attention_heads"},
      {R"({"num_layers": 0})", "num_layers"},
      {R"({"patch_size": -2})", "patch_size"},
      {R"({"text_embed_dim": 100})", "text_embed_dim"},
      {R"({"pooled_projection_dim": "wide"})", "pooled_projection_dim"},
      {R"({"time_embed_dim": 255})", "time_embed_dim"},
  };
  for (const auto& [text, want] : bad) {
    test::TempDir d;
    d.write("config.json", text);
    auto c = MochiConfig::from_json(d.str() + "/config.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.error().message.find(want), std::string::npos) << c.error().message;
    EXPECT_NE(c.error().message.find("config.json"), std::string::npos) << c.error().message;
  }
}

// A checkpoint without one of the tensors the model takes: the error names that tensor.
TEST(Mochi, MissingTensorIsNamed) {
  auto cfg = MochiConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  auto file = SafetensorsFile::open(fixture() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.ok());
  for (const std::string gone : {"pos_frequencies", "transformer_blocks.1.attn1.add_q_proj.weight",
                                 "transformer_blocks.0.ff_context.net.0.proj.weight", "time_embed.pooler.to_kv.bias"}) {
    std::vector<std::pair<std::string, Tensor>> kept;
    for (const auto& n : (*file)->names())
      if (n != gone) kept.push_back({n, (*file)->get(n).value()});
    test::TempDir d;
    ASSERT_TRUE(save_safetensors(d.str() + "/m.safetensors", kept).ok());
    auto ck = Checkpoint::open(d.str() + "/m.safetensors");
    ASSERT_TRUE(ck.ok());
    auto m = MochiTransformer::load(*ck, *cfg);
    ASSERT_FALSE(m.ok()) << gone;
    EXPECT_NE(m.error().message.find(gone), std::string::npos) << m.error().message;
  }
}

// Inputs that do not fit the model are errors naming the tensor, never a crash.
TEST(Mochi, ForwardInputErrorsNameTheTensor) {
  auto m = fixture_model();
  ASSERT_TRUE(m.ok()) << m.error().message;
  const Inputs in = fixture_inputs();
  auto expect_error = [&](const Result<Tensor>& r, const std::string& want) {
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_NE(r.error().message.find(want), std::string::npos) << r.error().message;
  };
  auto ok = m->forward(in.x, in.e, in.t, in.mask);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->shape(), in.x.shape());
  expect_error(m->forward(in.x.select(2, 0), in.e, in.t, in.mask), "hidden_states");
  expect_error(m->forward(in.x.slice(1, 0, 8), in.e, in.t, in.mask), "hidden_states");
  expect_error(m->forward(in.x.slice(3, 0, 5), in.e, in.t, in.mask), "multiples of the patch");
  expect_error(m->forward(in.x, in.e.slice(2, 0, 39), in.t, in.mask), "encoder_hidden_states");
  expect_error(m->forward(in.x, in.e.slice(0, 0, 1), in.t, in.mask), "encoder_hidden_states");
  expect_error(m->forward(in.x, in.e, in.t.slice(0, 0, 1), in.mask), "timestep");
  expect_error(m->forward(in.x, in.e, in.t, in.mask.slice(1, 0, 7)), "encoder_attention_mask");
  expect_error(m->forward(in.x, in.e, in.t, Tensor()), "encoder_attention_mask");
}

// Under TP a rank needs whole heads; the loader says so before taking any weight.
TEST(Mochi, HeadsNotDivisibleByTpIsAnError) {
  auto cfg = MochiConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  const Checkpoint meta = Checkpoint::meta(DType::BF16);
  auto tp = test::geometry_comm(0, 4);
  const ParallelContext par{tp.get(), nullptr, SpMode::Ring};
  auto m = MochiTransformer::load(meta, *cfg, &par);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("2 attention heads are not divisible by tp=4"), std::string::npos)
      << m.error().message;
}

// The sizes plan and bench work from: MochiPipeline's default video, the 6k+1 frames its VAE makes, the real
// model's parameter count (10.0 B) from the loader's weight spec, and the config read back from tensor names.
TEST(Mochi, RegistryEntryMatchesTheRealModel) {
  const TransformerArch* a = find_transformer_arch("MochiTransformer3DModel");
  ASSERT_NE(a, nullptr);
  const std::any real = MochiConfig{};
  auto n = a->image_tokens(real, 848, 480, 163);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 28 * 30 * 53);
  auto bad = a->image_tokens(real, 848, 480, 160);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("6k+1"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(a->image_tokens(real, 840, 480, 163).ok());
  auto spec = weight_spec(*a, real, 1, 0);
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  int64_t params = 0;
  for (const auto& w : *spec) params += shape_numel(w.shape);
  EXPECT_NEAR(double(params) / 1e9, 10.03, 0.01);
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok());
  auto inferred = a->infer_config(*ck);
  ASSERT_TRUE(inferred.ok()) << inferred.error().message;
  const MochiConfig& c = std::any_cast<const MochiConfig&>(*inferred);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.attention_head_dim, 16);
  EXPECT_EQ(c.pooled_projection_dim, 24);
  EXPECT_EQ(c.text_embed_dim, 40);
  EXPECT_EQ(c.in_channels, 12);
  EXPECT_EQ(c.out_channels, 12);
}

}  // namespace
