// AutoencoderKLMochi beyond the reference case: the chunked decode against the whole sequence in one chunk
// (the causal convs' cache carried between chunks), causality in time, the progress callback, and the
// errors of the config reader, the loader and decode.
#include "models/vae/autoencoder_kl_mochi.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/precision.h"

using namespace meshdit;

namespace {

using test::random_tensor;

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const std::vector<float> x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::fabs(double(x[i]) - double(y[i])));
  return m;
}

std::string case_dir() { return test::fixtures_dir() + "/vae_mochi"; }

// The fixture's model: 32 channels at every level, one resnet per block, the real expansions.
const AutoencoderKLMochi& fixture_vae() {
  static const AutoencoderKLMochi vae = [] {
    auto cfg = AutoencoderKLMochiConfig::from_json(case_dir() + "/config.json");
    MD_CHECK(cfg.ok(), cfg.ok() ? "" : cfg.error().message);
    auto ck = Checkpoint::open(case_dir() + "/diffusion_pytorch_model.safetensors");
    MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
    auto m = AutoencoderKLMochi::load(*ck, *cfg);
    MD_CHECK(m.ok(), m.ok() ? "" : m.error().message);
    return std::move(*m);
  }();
  return vae;
}

// Chunks of 1, 2 and 3 latent frames (the last one short) give the numbers of one chunk of all 5.
TEST(AutoencoderKLMochi, ChunkedDecodeEqualsTheWholeSequence) {
  const ScopedPrecision f32(Precision::F32);  // the bounds are float32 summation-order bounds
  const Tensor z = random_tensor({1, 12, 5, 3, 4}, 11);
  MochiDecodeOptions whole;
  whole.chunk_frames = 5;
  auto ref = fixture_vae().decode(z, whole);
  ASSERT_TRUE(ref.ok()) << ref.error().message;
  ASSERT_EQ(ref->shape(), (Shape{1, 3, 25, 24, 32}));
  for (int64_t chunk : {1, 2, 3}) {
    MochiDecodeOptions o;
    o.chunk_frames = chunk;
    auto got = fixture_vae().decode(z, o);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_LT(max_abs_diff(*got, *ref), 1e-5) << "chunks of " << chunk;
  }
}

// The first k latent frames decode to the first 6 (k - 1) + 1 frames whatever follows them; a batch of two
// is two decodes.
TEST(AutoencoderKLMochi, DecodeIsCausalInTimeAndPerBatchElement) {
  const ScopedPrecision f32(Precision::F32);
  const Tensor z = random_tensor({2, 12, 3, 2, 3}, 12);
  auto all = fixture_vae().decode(z);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_EQ(all->shape(), (Shape{2, 3, 13, 16, 24}));
  auto first = fixture_vae().decode(z.slice(2, 0, 2).contiguous());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_LT(max_abs_diff(*first, all->slice(2, 0, 7)), 1e-5);
  auto second = fixture_vae().decode(z.slice(0, 1, 2).contiguous());
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_LT(max_abs_diff(*second, all->slice(0, 1, 2)), 1e-5);
}

TEST(AutoencoderKLMochi, ProgressIsReportedPerChunk) {
  std::vector<MochiDecodeProgress> seen;
  MochiDecodeOptions o;
  o.chunk_frames = 2;
  o.on_chunk = [&](const MochiDecodeProgress& p) { seen.push_back(p); };
  auto v = fixture_vae().decode(random_tensor({1, 12, 3, 1, 2}, 13), o);
  ASSERT_TRUE(v.ok()) << v.error().message;
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].chunk, 0);
  EXPECT_EQ(seen[0].chunks, 2);
  EXPECT_EQ(seen[0].latent_frames_done, 2);
  EXPECT_EQ(seen[0].frames_done, 7);  // 12 frames less the 5 dropped
  EXPECT_EQ(seen[1].latent_frames_done, 3);
  EXPECT_EQ(seen[1].frames_done, 13);
  EXPECT_EQ(seen[1].frames, 13);
  EXPECT_GE(seen[1].seconds, 0.0);
}

TEST(AutoencoderKLMochi, DecodeInputErrors) {
  const std::pair<Tensor, const char*> cases[] = {
      {Tensor::zeros({1, 12, 4, 6}), "[B, 12, F, h, w]"},     // no frame axis
      {Tensor::zeros({1, 16, 2, 4, 6}), "[B, 12, F, h, w]"},  // wrong channels
      {Tensor::zeros({1, 12, 0, 4, 6}), "[B, 12, F, h, w]"},  // no frames
  };
  for (const auto& [z, what] : cases) {
    auto r = fixture_vae().decode(z);
    ASSERT_FALSE(r.ok()) << shape_str(z.shape());
    EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(shape_str(z.shape())), std::string::npos) << r.error().message;
  }
  MochiDecodeOptions o;
  o.chunk_frames = 0;
  auto r = fixture_vae().decode(Tensor::zeros({1, 12, 1, 2, 2}), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("chunk_frames"), std::string::npos) << r.error().message;
}

// A config asking for a resnet the file lacks names the tensor.
TEST(AutoencoderKLMochi, MissingTensorIsNamed) {
  auto cfg = AutoencoderKLMochiConfig::from_json(case_dir() + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  cfg->layers_per_block[0] = 2;  // block_out gets a second resnet
  auto ck = Checkpoint::open(case_dir() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok());
  auto m = AutoencoderKLMochi::load(*ck, *cfg);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("decoder.block_out.resnets.1.norm1.norm_layer.weight"), std::string::npos)
      << m.error().message;
  // The wrong width names the tensor and its shape.
  cfg->layers_per_block[0] = 1;
  cfg->decoder_block_out_channels = {64, 32, 32, 32};
  auto w = AutoencoderKLMochi::load(*ck, *cfg);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.error().message.find("decoder.up_blocks.2"), std::string::npos) << w.error().message;
}

// The loader takes the decoder's tensors, each once, and nothing of the encoder.
TEST(AutoencoderKLMochi, LoaderTakesTheDecoderOfTheFixture) {
  auto cfg = AutoencoderKLMochiConfig::from_json(case_dir() + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  Checkpoint meta = Checkpoint::meta(DType::F32);
  auto log = std::make_shared<WeightLog>();
  meta.record_into(log);
  ASSERT_TRUE(AutoencoderKLMochi::load(meta, *cfg).ok());
  auto file = Checkpoint::open(case_dir() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<std::string> taken, decoder;
  for (const auto& w : *log) {
    taken.push_back(w.name);
    auto t = file->get(w.name);
    ASSERT_TRUE(t.ok()) << w.name;
    EXPECT_EQ(t->shape(), w.shape) << w.name;
  }
  for (const auto& n : file->stored_names())
    if (n.rfind("decoder.", 0) == 0) decoder.push_back(n);
  std::sort(taken.begin(), taken.end());
  std::sort(decoder.begin(), decoder.end());
  EXPECT_EQ(taken, decoder);
}

// ---- config ------------------------------------------------------------------------------------------

TEST(AutoencoderKLMochiConfig, ReadsTheFixtureAndDefaultsAreTheRealModel) {
  auto f = AutoencoderKLMochiConfig::from_json(case_dir() + "/config.json");
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->decoder_block_out_channels, (std::vector<int>{32, 32, 32, 32}));
  EXPECT_EQ(f->temporal_scale(), 6);
  EXPECT_EQ(f->spatial_scale(), 8);
  EXPECT_FLOAT_EQ(f->scaling_factor, 1.0f);
  ASSERT_EQ(f->latents_mean.size(), 12u);
  EXPECT_FLOAT_EQ(f->latents_std[7], 1.3720942357788521f);
  auto c = AutoencoderKLMochiConfig::from_json_text("{}", "cfg");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->decoder_block_out_channels, (std::vector<int>{128, 256, 512, 768}));
  EXPECT_EQ(c->layers_per_block, (std::vector<int>{3, 3, 4, 6, 3}));
  EXPECT_EQ(c->latent_channels, 12);
  EXPECT_FLOAT_EQ(c->latents_mean[0], -0.06730895953510081f);
  EXPECT_FLOAT_EQ(c->latents_std[11], 0.9274757570805041f);
}

TEST(AutoencoderKLMochiConfig, BadConfigsAreClearErrorsNamingTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"layers_per_block": [3, 3, 4, 6]})", "layers_per_block"},
      {R"({"temporal_expansions": [1, 2]})", "temporal_expansions"},
      {R"({"spatial_expansions": [2, 2, 0]})", "spatial_expansions"},
      {R"({"decoder_block_out_channels": [128, 256, 500, 768]})", "decoder_block_out_channels"},
      {R"({"decoder_block_out_channels": "wide"})", "decoder_block_out_channels"},
      {R"({"latent_channels": 16})", "latents_mean"},
      {R"({"latents_std": ["a"]})", "latents_std"},
      {R"({"act_fn": "gelu"})", "act_fn"},
      {R"({"scaling_factor": 0})", "scaling_factor"},
      {R"({"add_attention_block": [1, 0]})", "add_attention_block"},
  };
  for (const auto& [text, key] : cases) {
    auto c = AutoencoderKLMochiConfig::from_json_text(text, "cfg.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.error().message.find(key), std::string::npos) << text << ": " << c.error().message;
    EXPECT_NE(c.error().message.find("cfg.json"), std::string::npos) << c.error().message;
  }
}

}  // namespace
