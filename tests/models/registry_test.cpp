// The model registry (models/registry.h): every registered transformer has a reference case, and what `plan`
// predicts a rank holds equals what the loader actually takes on that rank, for tp in {1, 2, 4}, so plan and
// loader cannot drift apart.
#include "models/registry.h"

#include <gtest/gtest.h>

#include <fstream>

#include "../test_util.h"
#include "app/plan.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "io/single_file.h"

using namespace meshdit;

namespace {

// The reference case of an entry's class (a diffusers class, or another library's full name), "" when there is
// none.
std::string fixture_of(const std::string& cls) {
  const std::string dir = test::fixtures_dir();
  for (const auto& c : test::case_names(dir)) {
    auto meta = load_json(dir + "/" + c + "/meta.json");
    if (meta.ok() && meta->contains("class") && (*meta)["class"] == case_class_of(cls)) return dir + "/" + c;
  }
  return "";
}

PlanRequest request(const std::string& model_dir, const TransformerArch& arch, int tp) {
  PlanRequest r;
  r.model = model_dir;
  r.mesh = "1x" + std::to_string(tp);
  r.parallel = "tp=" + std::to_string(tp);
  r.width = 64;
  r.height = 48;
  r.text_tokens = 10;
  r.dtype_bytes = 4;  // the checkpoints here are f32
  if (arch.defaults.frames > 1) r.frames = 13;  // a count every video VAE makes: 4k+1 (Wan) and 6k+1 (Mochi)
  auto cfg = arch.parse_config(model_dir + "/config.json");
  if (cfg.ok() && !arch.image_tokens(*cfg, r.width, r.height, r.frames).ok())
    r.width = r.height;  // square-only (Motif)
  return r;
}

// Per rank: the bytes the loader holds (measured from the tensors it got) against plan's prediction.
void expect_plan_matches_loader(const TransformerArch& arch, const std::string& dir, int tp) {
  SCOPED_TRACE(arch.name + " " + dir + " tp=" + std::to_string(tp));
  auto cfg = arch.parse_config(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto plan = make_plan(request(dir, arch, tp));
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  ASSERT_EQ(plan->ranks.size(), size_t(tp));
  for (int r = 0; r < tp; ++r) {
    auto loaded = loaded_weights(arch, *ck, *cfg, tp, r);
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
    int64_t bytes = 0;
    for (const auto& w : *loaded) bytes += int64_t(w.local_bytes());
    EXPECT_EQ(plan->ranks[size_t(r)].weight_bytes, bytes) << "rank " << r;
    // The spec from the config alone names the same tensors with the same local shapes.
    auto spec = weight_spec(arch, *cfg, tp, r, DType::F32);
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    ASSERT_EQ(spec->size(), loaded->size());
    for (size_t i = 0; i < spec->size(); ++i) {
      EXPECT_EQ((*spec)[i].name, (*loaded)[i].name);
      EXPECT_EQ((*spec)[i].local, (*loaded)[i].local) << (*spec)[i].name;
      EXPECT_EQ((*spec)[i].shard, (*loaded)[i].shard) << (*spec)[i].name;
    }
    if (tp > 1) {
      int sharded = 0;
      for (const auto& w : *loaded) sharded += w.shard != Shard::Replicated && w.local != w.shape;
      EXPECT_GT(sharded, 0) << "nothing sharded at tp=" << tp;
    }
  }
}

TEST(Registry, EveryModelHasAReferenceCaseAndPresets) {
  ASSERT_FALSE(transformer_archs().empty());
  for (const auto& a : transformer_archs()) {
    ASSERT_FALSE(a.classes.empty()) << a.name;
    EXPECT_NE(fixture_of(a.classes[0]), "") << a.name << ": no reference case of class " << a.classes[0];
    EXPECT_EQ(find_transformer_arch(a.classes[0]), &a);
    for (const auto& p : a.presets) {
      auto spec = weight_spec(a, p.config(), 1, 0);
      ASSERT_TRUE(spec.ok()) << p.name << ": " << spec.error().message;
      EXPECT_GT(spec->size(), 10u) << p.name;
    }
  }
  EXPECT_EQ(find_transformer_arch("UNet2DConditionModel"), nullptr);
}

// The fixture checkpoints (2 heads): tp 1 and 2 load them for real; tp=4 is refused by plan and loader alike,
// except by a model that pads its heads (SD3: 2 real + 2 zero heads), whose plan counts the padded rows.
TEST(Registry, PlanBytesEqualLoadedBytesOnTheFixtures) {
  for (const auto& a : transformer_archs()) {
    const std::string dir = fixture_of(a.classes[0]);
    ASSERT_NE(dir, "");
    for (int tp : {1, 2}) expect_plan_matches_loader(a, dir, tp);
    auto cfg = a.parse_config(dir + "/config.json");
    ASSERT_TRUE(cfg.ok());
    if (a.pad_heads) {
      expect_plan_matches_loader(a, dir, 4);
    } else if (a.dims(*cfg).heads % 4 != 0) {
      EXPECT_FALSE(make_plan(request(dir, a, 4)).ok()) << a.name;
      auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
      ASSERT_TRUE(ck.ok());
      EXPECT_FALSE(loaded_weights(a, *ck, *cfg, 4, 0).ok()) << a.name;
    }
  }
}

// The same model widened to 4 heads, its checkpoint written from the spec: tp in {1, 2, 4} load it for real.
TEST(Registry, PlanBytesEqualLoadedBytesAtFourHeads) {
  for (const auto& a : transformer_archs()) {
    const std::string dir = fixture_of(a.classes[0]);
    ASSERT_NE(dir, "");
    auto j = load_json(dir + "/config.json");
    ASSERT_TRUE(j.ok());
    Json c = *j;
    // Motif's config names the width (hidden_dim) instead of the head size.
    const bool by_width = c.contains("hidden_dim");
    const int64_t hd = by_width ? c.value("hidden_dim", int64_t(0)) / c.value("num_attention_heads", int64_t(1))
                                : c.value("attention_head_dim", int64_t(0));
    ASSERT_GT(hd, 0) << a.name;
    c["num_attention_heads"] = 4;
    if (by_width) c["hidden_dim"] = 4 * hd;
    if (c.contains("caption_projection_dim")) c["caption_projection_dim"] = 4 * hd;  // SD3: = inner dim
    const test::TempDir tmp(a.name);
    tmp.write("config.json", c.dump(2));
    auto cfg = a.parse_config(tmp.str() + "/config.json");
    ASSERT_TRUE(cfg.ok()) << cfg.error().message;
    auto spec = weight_spec(a, *cfg, 1, 0, DType::F32);
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& w : *spec) tensors.push_back({w.name, Tensor::zeros(w.shape)});
    ASSERT_TRUE(save_safetensors(tmp.str() + "/diffusion_pytorch_model.safetensors", tensors).ok());
    for (int tp : {1, 2, 4}) expect_plan_matches_loader(a, tmp.str(), tp);
  }
}

// Every transformer fixture is recognised in each naming its model has: its diffusers file as "diffusers", and the
// same tensors renamed by each single-file layout (Wan's original names share patch_embedding and blocks with its
// diffusers names) as that layout, plain and under ComfyUI's prefix; each answers to its own entry.
TEST(Registry, EveryNamingOfEveryFixtureIsDetectedAsItsModel) {
  int layouts_seen = 0;
  for (const auto& a : transformer_archs()) {
    const std::string dir = fixture_of(a.classes[0]);
    ASSERT_NE(dir, "");
    const std::string weights = dir + "/diffusion_pytorch_model.safetensors";
    std::string layout;
    auto ck = open_transformer_checkpoint(weights, &layout);
    ASSERT_TRUE(ck.ok()) << a.name << ": " << ck.error().message;
    EXPECT_EQ(layout, "diffusers") << a.name;
    EXPECT_EQ(transformer_arch_of(*ck, layout), &a) << a.name;
    std::vector<std::pair<std::string, Tensor>> diffusers;
    for (const auto& n : ck->names()) diffusers.emplace_back(n, ck->get(n).value());
    for (const auto& l : a.layouts) {
      auto stored = single_file_tensors(l, diffusers);
      ASSERT_TRUE(stored.ok()) << l.name << ": " << stored.error().message;
      for (const std::string prefix : {"", "model.diffusion_model."}) {
        SCOPED_TRACE(l.name + " prefix '" + prefix + "'");
        auto named = *stored;
        for (auto& kv : named) kv.first = prefix + kv.first;
        const test::TempDir tmp(a.name);
        const std::string file = tmp.str() + "/single.safetensors";
        ASSERT_TRUE(save_safetensors(file, named).ok());
        auto sf = open_transformer_checkpoint(file, &layout);
        ASSERT_TRUE(sf.ok()) << sf.error().message;
        EXPECT_EQ(layout, l.name);
        EXPECT_EQ(transformer_arch_of(*sf, layout), &a);
        EXPECT_EQ(sf->names(), ck->names());
      }
      ++layouts_seen;
    }
  }
  EXPECT_GE(layouts_seen, 3) << "flux-bfl, sd3-stability and wan-original at least";
}

}  // namespace
