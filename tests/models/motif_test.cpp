// What is specific to Motif-Image's DiT: its config keys, the tensors its loader names, the inputs its forward
// checks, the zero heads TP pads its 30 heads with, and how the registry finds a non-diffusers class. The
// forward itself is checked against the reference by the motif_transformer case (tests/fixtures_test.cpp) and on
// a mesh by tests/mpi/fixture_parallel_test.cpp.
#include "models/transformers/motif.h"

#include <gtest/gtest.h>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/registry.h"

using namespace meshdit;

namespace {

std::string fixture() { return test::fixtures_dir() + "/motif_transformer"; }

Result<MotifConfig> config_from(const std::string& text) { return MotifConfig::from_json_text(text, "config.json"); }

std::string error_of(const Result<MotifConfig>& r) { return r.ok() ? "" : r.error().message; }

TEST(Motif, ConfigReadsTheFixturesJson) {
  auto c = MotifConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->hidden_dim, 32);
  EXPECT_EQ(c->num_attention_heads, 2);
  EXPECT_EQ(c->modulation_dim, 48);
  EXPECT_EQ(c->pos_emb_size, 8);
  EXPECT_EQ(c->grid(), 6);
  EXPECT_TRUE(c->use_time_token_in_attn);
  // Without pos_emb_size the reference picks 64 above 512 pixels, else 16.
  EXPECT_EQ(config_from(R"({"height": 1024, "width": 1024})")->pos_emb_size, 64);
  EXPECT_EQ(config_from(R"({"height": 512, "width": 512})")->pos_emb_size, 16);
}

TEST(Motif, BadConfigNamesTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"hidden_dim": "wide"})", "hidden_dim"},
      {R"({"num_attention_heads": 7})", "num_attention_heads"},
      {R"({"num_layers": 0})", "num_layers"},
      {R"({"conv_header": true})", "conv_header"},
      {R"({"additional_register_token_num": 2})", "additional_register_token_num"},
      {R"({"attn_mode": "xformers"})", "attn_mode"},
      {R"({"height": 1024, "width": 768})", "width"},
  };
  for (const auto& [json, key] : cases) {
    const std::string e = error_of(config_from(json));
    EXPECT_NE(e.find(key), std::string::npos) << json << ": " << e;
    EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  }
}

TEST(Motif, MissingTensorIsNamed) {
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const std::string dropped = "mmdit_blocks.1.attn.q_scale";
  std::vector<std::pair<std::string, Tensor>> kept;
  for (const auto& n : ck->names())
    if (n != dropped) kept.push_back({n, ck->get(n).value()});
  const test::TempDir d;
  const std::string path = d.str() + "/partial.safetensors";
  ASSERT_TRUE(save_safetensors(path, kept).ok());
  auto partial = Checkpoint::open(path);
  ASSERT_TRUE(partial.ok()) << partial.error().message;
  auto cfg = MotifConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  auto m = MotifTransformer::load(*partial, *cfg);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find(dropped), std::string::npos) << m.error().message;
  // A config that does not match the weights names the tensor whose shape differs.
  MotifConfig wide = *cfg;
  wide.mlp_hidden_dim = 64;
  auto w = MotifTransformer::load(*ck, wide);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.error().message.find("mlp_3_x.gate_proj"), std::string::npos) << w.error().message;
}

TEST(Motif, BadInputShapesAreNamed) {
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  auto cfg = MotifConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(ck.ok() && cfg.ok());
  auto m = MotifTransformer::load(*ck, *cfg);
  ASSERT_TRUE(m.ok()) << m.error().message;
  const int64_t B = 1;
  const Tensor latent = Tensor::zeros({B, 16, 12, 12}), t = Tensor::from_i64({B}, {500});
  const Tensor t5 = Tensor::zeros({B, 3, 4096}), cl = Tensor::zeros({B, 2, 768}), cg = Tensor::zeros({B, 2, 1280});
  const Tensor pooled = Tensor::zeros({B, 64});
  ASSERT_TRUE(m->forward(latent, t, t5, cl, cg, pooled).ok());
  auto expect_error = [&](const Result<Tensor>& r, const char* name) {
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_NE(r.error().message.find(name), std::string::npos) << r.error().message;
  };
  expect_error(m->forward(Tensor::zeros({B, 16, 12, 8}), t, t5, cl, cg, pooled), "latent");  // not square
  expect_error(m->forward(Tensor::zeros({B, 4, 12, 12}), t, t5, cl, cg, pooled), "latent");  // 4 channels
  expect_error(m->forward(latent, Tensor::from_i64({2}, {1, 2}), t5, cl, cg, pooled), "t ");
  expect_error(m->forward(latent, t, Tensor::zeros({B, 3, 2048}), cl, cg, pooled), "text_emb_t5");
  expect_error(m->forward(latent, t, t5, Tensor::zeros({B, 2, 4000}), cg, pooled), "text_emb_clip_l");
  expect_error(m->forward(latent, t, t5, cl, Tensor::zeros({B, 3, 1280}), pooled), "text_emb_clip_g");
  expect_error(m->forward(latent, t, t5, cl, cg, Tensor::zeros({B, 63})), "pooled_text_embs");
  expect_error(m->forward(latent, t, t5, cl, cg, Tensor()), "pooled_text_embs");
}

// 2 heads at tp=4: ranks 0 and 1 hold a real head each, ranks 2 and 3 a zero head (zero q/k/v rows and o_proj
// columns, q_scale 0), so the padded model computes what the unpadded one does (the forward is compared with
// the reference at tp=4 by TransformerOnMesh.MotifPaddedHeads).
TEST(Motif, PaddedHeadsAreZero) {
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  auto cfg = MotifConfig::from_json(fixture() + "/config.json");
  ASSERT_TRUE(ck.ok() && cfg.ok());
  const std::string pre = "mmdit_blocks.0.attn";
  const std::vector<float> q_scale = ck->get(pre + ".q_scale")->to_vector();
  const Tensor q = ck->get(pre + ".add_q_proj.weight").value(), o = ck->get(pre + ".o_proj.weight").value();
  const int64_t hd = cfg->head_dim();
  for (int r = 0; r < 4; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ShapeOnlyComm comm(4, r);
    LocalComm sp;
    const ParallelContext par{&comm, &sp, SpMode::Ring};
    auto b = MotifBlock::load(*ck, "mmdit_blocks.0", *cfg, &par, padded_head_count(2, 4));
    ASSERT_TRUE(b.ok()) << b.error().message;
    ASSERT_EQ(b->attn.heads, 1);
    EXPECT_FALSE(b->attn.img.q.bias.defined());  // no biases on q/k/v
    const bool real = r < 2;
    EXPECT_EQ(b->attn.txt_q_scale.to_vector(), std::vector<float>{real ? q_scale[size_t(r)] : 0.0f});
    const std::vector<float> rows = b->attn.txt.q.weight.to_vector();
    const std::vector<float> cols = b->attn.to_out.weight.contiguous().to_vector();
    if (real) {
      EXPECT_EQ(rows, q.slice(0, r * hd, (r + 1) * hd).contiguous().to_vector());
      EXPECT_EQ(cols, o.slice(1, r * hd, (r + 1) * hd).contiguous().to_vector());
    } else {
      for (float v : rows) ASSERT_EQ(v, 0.0f);
      for (float v : cols) ASSERT_EQ(v, 0.0f);
    }
  }
}

TEST(Motif, RegistryServesTheReferenceClass) {
  EXPECT_EQ(case_class_of("FluxTransformer2DModel"), "diffusers.FluxTransformer2DModel");
  const std::string cls = "motif_ref.motif.modeling_dit.MotifDiT";
  EXPECT_EQ(case_class_of(cls), cls);
  const TransformerArch* a = find_transformer_arch_for_case(cls);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->name, "motif");
  EXPECT_EQ(find_transformer_arch_for_case("diffusers.SD3Transformer2DModel")->name, "sd3");
  // The config from the weights alone agrees with config.json where the weights say it.
  auto ck = Checkpoint::open(fixture() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok());
  auto inferred = infer_motif_config(*ck);
  ASSERT_TRUE(inferred.ok()) << inferred.error().message;
  auto cfg = MotifConfig::from_json(fixture() + "/config.json");
  EXPECT_EQ(inferred->num_layers, cfg->num_layers);
  EXPECT_EQ(inferred->hidden_dim, cfg->hidden_dim);
  EXPECT_EQ(inferred->num_attention_heads, cfg->num_attention_heads);
  EXPECT_EQ(inferred->mlp_hidden_dim, cfg->mlp_hidden_dim);
  EXPECT_EQ(inferred->modulation_dim, cfg->modulation_dim);
  EXPECT_EQ(inferred->time_embed_dim, cfg->time_embed_dim);
  EXPECT_EQ(inferred->pooled_text_dim, cfg->pooled_text_dim);
  EXPECT_EQ(inferred->register_token_num, 4);
  EXPECT_TRUE(inferred->use_time_token_in_attn);
  // Square images only, in multiples of 16 pixels.
  const std::any real = a->presets.at(0).config();
  EXPECT_EQ(a->image_tokens(real, 1024, 1024, 1).value(), 4096);
  EXPECT_FALSE(a->image_tokens(real, 1024, 768, 1).ok());
  EXPECT_FALSE(a->image_tokens(real, 1000, 1000, 1).ok());
}

}  // namespace
