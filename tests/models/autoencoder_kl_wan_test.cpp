// AutoencoderKLWan beyond the reference cases: the causal 3-D conv (as kt shifted 2-D convs with a cache
// carried between chunks) against a direct nested-loop Conv3d with causal zero padding over the whole
// sequence, the RMS norm against its formula, the chunked decode's causality on the fixture model, and the
// config reader's errors.
#include "models/vae/autoencoder_kl_wan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.h"
#include "core/progress.h"
#include "core/trace.h"
#include "io/safetensors.h"

using namespace meshdit;

namespace {

using test::random_tensor;

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// nn.Conv3d on x [B, C, T, H, W] (float64 sums) after F.pad with `front` zero frames and pad_s on each side
// of H and W: w [O, C, kt, k, k], bias [O], temporal stride st.
std::vector<float> conv3d_reference(const std::vector<float>& x, const std::vector<float>& w,
                                    const std::vector<float>& bias, int64_t B, int64_t C, int64_t T, int64_t H,
                                    int64_t W, int64_t O, int64_t kt, int64_t k, int64_t front, int64_t pad_s,
                                    int64_t st, int64_t* t_out) {
  const int64_t Tp = T + front, To = (Tp - kt) / st + 1;
  *t_out = To;
  std::vector<float> y(size_t(B * O * To * H * W));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t t = 0; t < To; ++t)
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < W; ++j) {
            double s = bias[size_t(o)];
            for (int64_t c = 0; c < C; ++c)
              for (int64_t dt = 0; dt < kt; ++dt) {
                const int64_t tt = t * st + dt - front;
                if (tt < 0 || tt >= T) continue;
                for (int64_t di = 0; di < k; ++di)
                  for (int64_t dj = 0; dj < k; ++dj) {
                    const int64_t ii = i + di - pad_s, jj = j + dj - pad_s;
                    if (ii < 0 || ii >= H || jj < 0 || jj >= W) continue;
                    s += double(x[size_t((((b * C + c) * T + tt) * H + ii) * W + jj)]) *
                         w[size_t((((o * C + c) * kt + dt) * k + di) * k + dj)];
                  }
              }
            y[size_t((((b * O + o) * To + t) * H + i) * W + j)] = float(s);
          }
  return y;
}

struct ConvCase {
  wan::CausalConv3d conv;
  Tensor w, b;
};

ConvCase make_conv(const test::TempDir& dir, int64_t C, int64_t O, int64_t kt, int64_t k, int64_t pad_t, int pad_s,
                   int64_t st) {
  ConvCase c;
  c.w = random_tensor({O, C, kt, k, k}, 11, 0.3f);
  c.b = random_tensor({O}, 12, 0.3f);
  const std::string path = dir.str() + "/conv.safetensors";
  EXPECT_TRUE(save_safetensors(path, {{"conv.weight", c.w}, {"conv.bias", c.b}}).ok());
  auto ck = Checkpoint::open(path);
  EXPECT_TRUE(ck.ok());
  auto conv = wan::CausalConv3d::load(*ck, "conv", C, O, kt, k, pad_t, pad_s, st);
  EXPECT_TRUE(conv.ok()) << conv.error().message;
  // The weight views need the file mapped: keep copies independent of the checkpoint's lifetime.
  for (auto& tap : conv->taps) {
    tap.weight = tap.weight.clone();
    if (tap.bias.defined()) tap.bias = tap.bias.clone();
  }
  c.conv = std::move(*conv);
  return c;
}

// [B, C, T, H, W] <-> the model's frame-major [T, B, C, H, W].
Tensor frame_major(const Tensor& x) { return x.permute({2, 0, 1, 3, 4}).contiguous(); }
Tensor channel_major(const Tensor& x) { return x.permute({1, 2, 0, 3, 4}).contiguous(); }

TEST(WanCausalConv3d, ChunksWithTheCacheEqualTheWholeSequenceCausallyPadded) {
  test::TempDir dir;
  const int64_t B = 2, C = 3, O = 4, T = 6, H = 5, W = 4;
  ConvCase c = make_conv(dir, C, O, 3, 3, 1, 1, 1);
  const Tensor x = random_tensor({B, C, T, H, W}, 7);
  int64_t To = 0;
  const auto ref =
      conv3d_reference(x.to_vector(), c.w.to_vector(), c.b.to_vector(), B, C, T, H, W, O, 3, 3, 2, 1, 1, &To);
  ASSERT_EQ(To, T);
  // Whole at once, then in chunks of 1, 2, 1, 2 frames carrying the cache (the decoder's and encoder's use).
  const Tensor whole = channel_major(c.conv(frame_major(x)));
  EXPECT_LT(max_abs_diff(whole.to_vector(), ref), 1e-5);
  wan::CacheSlot slot;
  std::vector<Tensor> parts;
  const int64_t bounds[] = {0, 1, 3, 4, 6};
  for (int i = 0; i < 4; ++i)
    parts.push_back(c.conv.cached(frame_major(x.slice(2, bounds[i], bounds[i + 1]).contiguous()), slot, nullptr));
  EXPECT_LT(max_abs_diff(channel_major(concat(parts, 0)).to_vector(), ref), 1e-5);
  EXPECT_EQ(slot.frames.size(0), wan::kCacheT);
}

TEST(WanCausalConv3d, StridedTemporalConvWithoutPadding) {
  test::TempDir dir;
  const int64_t B = 1, C = 2, O = 3, T = 5, H = 3, W = 2;
  ConvCase c = make_conv(dir, C, O, 3, 1, 0, 0, 2);
  const Tensor x = random_tensor({B, C, T, H, W}, 8);
  int64_t To = 0;
  const auto ref =
      conv3d_reference(x.to_vector(), c.w.to_vector(), c.b.to_vector(), B, C, T, H, W, O, 3, 1, 0, 0, 2, &To);
  ASSERT_EQ(To, 2);
  const Tensor y = channel_major(c.conv(frame_major(x)));
  EXPECT_EQ(y.shape(), (Shape{B, O, 2, H, W}));
  EXPECT_LT(max_abs_diff(y.to_vector(), ref), 1e-5);
}

TEST(WanRMSNorm, NormalisesOverChannelsTimesSqrtCAndGamma) {
  test::TempDir dir;
  const int64_t N = 2, C = 5, H = 3, W = 2;
  const Tensor gamma = random_tensor({C, 1, 1, 1}, 3);
  const std::string path = dir.str() + "/norm.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"norm.gamma", gamma}}).ok());
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok());
  auto norm = wan::ChannelRMSNorm::load(*ck, "norm", C, false);
  ASSERT_TRUE(norm.ok()) << norm.error().message;
  Tensor x = random_tensor({N, C, H, W}, 4);
  const auto xv = x.to_vector(), gv = gamma.to_vector();
  const auto y = (*norm)(x, false).to_vector();
  const auto ys = (*norm)(x, true).to_vector();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < H * W; ++p) {
      double ss = 0;
      for (int64_t c = 0; c < C; ++c)
        ss += double(xv[size_t((n * C + c) * H * W + p)]) * xv[size_t((n * C + c) * H * W + p)];
      for (int64_t c = 0; c < C; ++c) {
        const size_t i = size_t((n * C + c) * H * W + p);
        const double want = xv[i] / std::max(std::sqrt(ss), 1e-12) * std::sqrt(double(C)) * gv[size_t(c)];
        EXPECT_NEAR(y[i], want, 1e-5);
        EXPECT_NEAR(ys[i], want / (1 + std::exp(-want)), 1e-5);
      }
    }
}

// ---- the fixture model ---------------------------------------------------------------------------------

const AutoencoderKLWan& fixture_vae(const std::string& name) {
  static std::map<std::string, AutoencoderKLWan> models;
  auto it = models.find(name);
  if (it != models.end()) return it->second;
  const std::string dir = test::fixtures_dir() + "/" + name;
  auto cfg = AutoencoderKLWanConfig::from_json(dir + "/config.json");
  MD_CHECK(cfg.ok(), cfg.ok() ? "" : cfg.error().message);
  auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
  MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
  auto m = AutoencoderKLWan::load(*ck, *cfg);
  MD_CHECK(m.ok(), m.ok() ? "" : m.error().message);
  return models.emplace(name, std::move(*m)).first->second;
}

Tensor fixture_input(const std::string& name, const std::string& input) {
  auto f = Checkpoint::open(test::fixtures_dir() + "/" + name + "/inputs.safetensors");
  MD_CHECK(f.ok(), f.ok() ? "" : f.error().message);
  auto t = f->get(input);
  MD_CHECK(t.ok(), t.ok() ? "" : t.error().message);
  return t->to(DType::F32).contiguous();
}

// Causality: the first latent frame decodes to the first frame whatever follows it, and the first k latent
// frames to the first 1 + 4 (k - 1) frames.
TEST(AutoencoderKLWan, DecodeIsCausalInTime) {
  const AutoencoderKLWan& vae = fixture_vae("vae_wan21");
  const Tensor z = fixture_input("vae_wan21", "z");  // [1, 16, 3, 6, 8]
  auto all = vae.decode(z);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_EQ(all->shape(), (Shape{1, 3, 9, 48, 64}));
  for (int64_t k = 1; k <= 2; ++k) {
    auto part = vae.decode(z.slice(2, 0, k).contiguous());
    ASSERT_TRUE(part.ok()) << part.error().message;
    const int64_t frames = 1 + 4 * (k - 1);
    ASSERT_EQ(part->size(2), frames);
    EXPECT_LT(max_abs_diff(part->to_vector(), all->slice(2, 0, frames).contiguous().to_vector()), 1e-6) << k;
  }
}

// A long decode says how far it is: 0 as it starts, then once per latent frame, in order (generate's
// progress bar), and one "vae_chunk" span per frame (--timings' vae_chunks_s).
TEST(AutoencoderKLWan, DecodeReportsEachLatentFrame) {
  const AutoencoderKLWan& vae = fixture_vae("vae_wan21");
  const Tensor z = fixture_input("vae_wan21", "z");  // 3 latent frames
  std::vector<std::pair<int64_t, int64_t>> seen;
  Trace::instance().clear();
  Trace::instance().enable(true);
  {
    ScopedProgressListener listen([&](const char* stage, int64_t done, int64_t total) {
      EXPECT_STREQ(stage, "vae decode");
      seen.emplace_back(done, total);
    });
    ASSERT_TRUE(vae.decode(z).ok());
  }
  Trace::instance().enable(false);
  int spans = 0;
  for (const auto& e : Trace::instance().events()) spans += std::string(e.category) == "vae_chunk";
  Trace::instance().clear();
  EXPECT_EQ(seen, (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {1, 3}, {2, 3}, {3, 3}}));
  EXPECT_EQ(spans, 3);
  report_progress("vae decode", 1, 3);  // no listener: nothing to call, no crash
}

// Encoding is causal too: frame 0 alone gives the first latent frame of the whole video's posterior.
TEST(AutoencoderKLWan, EncodeIsCausalInTime) {
  const AutoencoderKLWan& vae = fixture_vae("vae_wan21");
  const Tensor video = fixture_input("vae_wan21", "video");  // [1, 3, 9, 48, 64]
  auto all = vae.encode(video);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_EQ(all->mean.shape(), (Shape{1, 16, 3, 6, 8}));
  auto first = vae.encode(video.slice(2, 0, 1).contiguous());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_LT(max_abs_diff(first->mean.to_vector(), all->mean.slice(2, 0, 1).contiguous().to_vector()), 1e-6);
  // Frames short of a whole chunk of 4 are dropped, as diffusers does.
  auto trimmed = vae.encode(video.slice(2, 0, 8).contiguous());
  ASSERT_TRUE(trimmed.ok()) << trimmed.error().message;
  EXPECT_EQ(trimmed->mean.size(2), 2);
}

TEST(AutoencoderKLWan, InputErrors) {
  const AutoencoderKLWan& vae = fixture_vae("vae_qwenimage");
  auto bad = vae.decode(Tensor::zeros({1, 16, 6, 10}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("[B, 16, F, h, w]"), std::string::npos) << bad.error().message;
  auto odd = vae.encode(Tensor::zeros({1, 3, 1, 20, 16}));
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.error().message.find("multiples of 8"), std::string::npos) << odd.error().message;
}

// The loader takes every stored tensor once, and nothing else, touching no memory: run on a meta
// checkpoint it is the weight spec.
TEST(AutoencoderKLWan, LoaderIsTheWeightSpecOfTheFixture) {
  const std::string dir = test::fixtures_dir() + "/vae_wan21";
  auto cfg = AutoencoderKLWanConfig::from_json(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  Checkpoint meta = Checkpoint::meta(DType::F32);
  auto log = std::make_shared<WeightLog>();
  meta.record_into(log);
  auto m = AutoencoderKLWan::load(meta, *cfg);
  ASSERT_TRUE(m.ok()) << m.error().message;
  auto file = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<std::string> taken, stored = file->stored_names();
  for (const auto& w : *log) {
    taken.push_back(w.name);
    auto t = file->get(w.name);
    ASSERT_TRUE(t.ok()) << w.name;
    EXPECT_EQ(t->shape(), w.shape) << w.name;
  }
  std::sort(taken.begin(), taken.end());
  std::sort(stored.begin(), stored.end());
  EXPECT_EQ(taken, stored);
}

// ---- config ------------------------------------------------------------------------------------------

TEST(AutoencoderKLWanConfig, ReadsBothClassesConfigs) {
  auto q = AutoencoderKLWanConfig::from_json(test::fixtures_dir() + "/vae_qwenimage/config.json");
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->base_dim, 4);
  EXPECT_EQ(q->in_channels, 3);
  EXPECT_EQ(q->out_channels, 3);
  EXPECT_EQ(q->spatial_scale(), 8);
  EXPECT_EQ(q->temporal_scale(), 4);
  ASSERT_EQ(q->latents_mean.size(), 16u);
  EXPECT_FLOAT_EQ(q->latents_mean[0], -0.7571f);
  EXPECT_FLOAT_EQ(q->latents_std[15], 1.916f);
  auto w = AutoencoderKLWanConfig::from_json(test::fixtures_dir() + "/vae_wan21/config.json");
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w->decoder_dim(), 4);
  EXPECT_EQ(w->temperal_downsample, (std::vector<bool>{false, true, true}));
}

TEST(AutoencoderKLWanConfig, DefaultsAreTheRealModel) {
  auto c = AutoencoderKLWanConfig::from_json_text("{}", "cfg");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->base_dim, 96);
  EXPECT_EQ(c->z_dim, 16);
  EXPECT_EQ(c->latents_std.size(), 16u);
  // Odd channels are fine where no upsampler halves them (the last up block's).
  EXPECT_TRUE(AutoencoderKLWanConfig::from_json_text(R"({"base_dim": 3})", "cfg").ok());
}

TEST(AutoencoderKLWanConfig, UnsupportedOptionsAreClearErrors) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"is_residual": true})", "is_residual"},
      {R"({"patch_size": 2})", "patch_size"},
      {R"({"attn_scales": [0.5]})", "attn_scales"},
      {R"({"temperal_downsample": [true]})", "temperal_downsample"},
      {R"({"temperal_downsample": [1, 0, 1]})", "temperal_downsample"},
      {R"({"z_dim": 4})", "latents_mean"},
      {R"({"dim_mult": []})", "dim_mult"},
      {R"({"latents_std": ["a"]})", "latents_std"},
      {R"({"base_dim": 3, "dim_mult": [1, 1, 2, 2]})", "odd"},
  };
  for (const auto& [text, key] : cases) {
    auto c = AutoencoderKLWanConfig::from_json_text(text, "cfg.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.error().message.find(key), std::string::npos) << text << ": " << c.error().message;
    EXPECT_NE(c.error().message.find("cfg.json"), std::string::npos) << c.error().message;
  }
}

}  // namespace
