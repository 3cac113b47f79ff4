// Single-file transformer layouts (Black Forest Labs' flux1-*.safetensors, Stability's sd3.5_large.safetensors,
// optionally under ComfyUI's "model.diffusion_model." prefix): each transformer fixture is converted into the
// layout by the layout's key map inverted (fused q/k/v rows stacked, shift/scale swapped back), loaded through
// open_transformer_checkpoint, and run on the case's inputs; the output must equal the diffusers-layout model's
// bit for bit. Config inference is checked on the converted fixtures and on headers with the real models' shapes,
// which are written out by hand here, independently of the key maps, and must equal the inverted maps' shapes.
#include "io/single_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "../test_util.h"
#include "app/check.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "models/transformers/flux.h"
#include "models/transformers/sd3.h"

namespace fs = std::filesystem;
using namespace meshdit;
using Json = nlohmann::json;

namespace {

using test::TempDir;

const char* const kWeights = "diffusion_pytorch_model.safetensors";
const char* const kComfy = "model.diffusion_model.";

std::string case_dir(const std::string& name) { return test::fixtures_dir() + "/" + name; }

using Named = std::vector<std::pair<std::string, Tensor>>;

// A diffusers-layout fixture converted into the single-file layout `layout` by the layout's own key map, inverted;
// the conversion must take every diffusers tensor.
Named to_layout(const std::string& layout, const std::string& file) {
  auto ck = Checkpoint::open_file(file);
  EXPECT_TRUE(ck.ok()) << ck.error().message;
  if (!ck.ok()) return {};
  Named diffusers;
  for (const auto& n : ck->names()) diffusers.emplace_back(n, ck->get(n).value());
  for (const auto& a : transformer_archs())
    for (const auto& l : a.layouts)
      if (l.name == layout) {
        auto t = single_file_tensors(l, diffusers);
        EXPECT_TRUE(t.ok()) << t.error().message;
        return t.ok() ? *t : Named{};
      }
  ADD_FAILURE() << "no layout " << layout;
  return {};
}

Named with_prefix(Named t, const std::string& prefix) {
  for (auto& kv : t) kv.first = prefix + kv.first;
  return t;
}

// Writes `tensors` as `file_name` in `dir`, with the case's config.json beside it when `with_config`.
std::string write_single_file(const fs::path& dir, const std::string& file_name, const Named& tensors,
                              const std::string& case_name, bool with_config) {
  const fs::path p = dir / file_name;
  Status st = save_safetensors(p.string(), tensors);
  EXPECT_TRUE(st.ok()) << st.error().message;
  if (with_config) fs::copy_file(fs::path(case_dir(case_name)) / "config.json", dir / "config.json");
  return p.string();
}

std::map<std::string, Tensor> read_all(const std::string& file) {
  std::map<std::string, Tensor> m;
  auto f = SafetensorsFile::open(file);
  EXPECT_TRUE(f.ok()) << f.error().message;
  if (!f.ok()) return m;
  for (const auto& n : (*f)->names()) m[n] = (*f)->get(n).value();
  return m;
}

Tolerance sample_tolerance(const std::string& case_name) {
  auto meta = load_json(case_dir(case_name) + "/meta.json");
  EXPECT_TRUE(meta.ok());
  Tolerance t;
  const Json& j = meta.value();
  if (j.contains("tolerance") && j["tolerance"].contains("sample")) {
    const Json& e = j["tolerance"]["sample"];
    if (e.contains("rel_l2")) t.rel_l2 = e["rel_l2"].get<double>();
    if (e.contains("max_abs")) t.max_abs = e["max_abs"].get<double>();
  }
  return t;
}

// The converted model's output must be the diffusers-layout model's, bit for bit, and within the case's tolerance
// of the reference.
void expect_same_output(const std::string& case_name, const Tensor& got, const Tensor& base) {
  ASSERT_TRUE(got.defined() && base.defined());
  ASSERT_EQ(got.shape(), base.shape());
  const std::vector<float> g = got.to_vector(), b = base.to_vector();
  size_t differ = 0;
  for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &b[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0u) << "of " << g.size() << " elements differ from the diffusers-layout model's";
  const auto outputs = read_all(case_dir(case_name) + "/outputs.safetensors");
  ASSERT_TRUE(outputs.count("sample"));
  const Comparison c = compare_tensor("sample", got, outputs.at("sample"), sample_tolerance(case_name));
  EXPECT_TRUE(c.pass) << "max_abs " << c.max_abs << " rel_l2 " << c.rel_l2 << " " << c.note;
}

Result<Tensor> run_flux(const Checkpoint& ck, const FluxConfig& cfg, const std::string& case_name) {
  MD_TRY(FluxTransformer model, FluxTransformer::load(ck, cfg));
  const auto in = read_all(case_dir(case_name) + "/inputs.safetensors");
  const Tensor guidance = cfg.guidance_embeds ? in.at("guidance") : Tensor();
  return model.forward(in.at("hidden_states"), in.at("encoder_hidden_states"), in.at("pooled_projections"),
                       in.at("timestep"), in.at("img_ids"), in.at("txt_ids"), guidance);
}

Result<Tensor> run_sd3(const Checkpoint& ck, const SD3Config& cfg, const std::string& case_name) {
  MD_TRY(SD3Transformer model, SD3Transformer::load(ck, cfg));
  const auto in = read_all(case_dir(case_name) + "/inputs.safetensors");
  return model.forward(in.at("hidden_states"), in.at("encoder_hidden_states"), in.at("pooled_projections"),
                       in.at("timestep"));
}

// Checks that `name` (an alias) is a view of rows [row0, row0 + rows) of the stored fused tensor: same mapping,
// data pointer inside it.
void expect_view(const Checkpoint& ck, const std::string& name, const std::string& fused, int64_t row0) {
  ASSERT_TRUE(ck.is_alias(name)) << name;
  auto t = ck.get(name);
  auto f = ck.get_stored(fused);
  ASSERT_TRUE(t.ok() && f.ok()) << name << " / " << fused;
  EXPECT_TRUE(t->read_only()) << name << " is not a view into the mapped file";
  const char* base = static_cast<const char*>(f->raw());
  const char* p = static_cast<const char*>(t->raw());
  EXPECT_GE(p, base);
  EXPECT_LE(p + t->nbytes(), base + f->nbytes());
  const size_t row_bytes = f->nbytes() / size_t(f->size(0));
  EXPECT_EQ(p, base + size_t(row0) * row_bytes) << name;
}

void expect_flux_config_eq(const FluxConfig& a, const FluxConfig& b) {
  EXPECT_EQ(a.patch_size, b.patch_size);
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_dim(), b.out_dim());
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_single_layers, b.num_single_layers);
  EXPECT_EQ(a.attention_head_dim, b.attention_head_dim);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.joint_attention_dim, b.joint_attention_dim);
  EXPECT_EQ(a.pooled_projection_dim, b.pooled_projection_dim);
  EXPECT_EQ(a.guidance_embeds, b.guidance_embeds);
  EXPECT_EQ(a.axes_dims_rope, b.axes_dims_rope);
}

// Everything but sample_size (the pipelines' default image size, which is not in the weights).
void expect_sd3_config_eq(const SD3Config& a, const SD3Config& b) {
  EXPECT_EQ(a.patch_size, b.patch_size);
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.attention_head_dim, b.attention_head_dim);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.joint_attention_dim, b.joint_attention_dim);
  EXPECT_EQ(a.caption_projection_dim, b.caption_projection_dim);
  EXPECT_EQ(a.pooled_projection_dim, b.pooled_projection_dim);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.pos_embed_max_size, b.pos_embed_max_size);
  EXPECT_EQ(a.dual_attention_layers, b.dual_attention_layers);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
}

void expect_mentions(const std::string& message, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << "'" << n << "' not in: " << message;
}

// --- Flux ---------------------------------------------------------------------------------------------------

void check_flux_case(const std::string& case_name, const std::string& prefix, const std::string& file_name) {
  TempDir tmp;
  const std::string dir = case_dir(case_name);
  auto cfg = FluxConfig::from_json(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  const Named converted = with_prefix(to_layout("flux-bfl", dir + "/" + kWeights), prefix);
  const std::string file = write_single_file(tmp.path(), file_name, converted, case_name, true);

  std::string layout;
  auto ck = open_transformer_checkpoint(file, &layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(layout, "flux-bfl");
  auto base_ck = Checkpoint::open_file(dir + "/" + kWeights);
  ASSERT_TRUE(base_ck.ok());
  EXPECT_EQ(ck->names(), base_ck->names()) << "the aliases are not exactly the diffusers names";
  for (const auto& n : base_ck->names()) {
    auto a = ck->shape_of(n), b = base_ck->shape_of(n);
    ASSERT_TRUE(a.ok() && b.ok()) << n;
    EXPECT_EQ(*a, *b) << n;
    auto ta = ck->get(n), tb = base_ck->get(n);
    ASSERT_TRUE(ta.ok() && tb.ok()) << n;
    EXPECT_EQ(ta->to_vector(), tb->to_vector()) << n;
  }

  // The config.json beside the file wins over inference (whose RoPE axes would fail for head size 16).
  auto used = flux_config_for(file, *ck);
  ASSERT_TRUE(used.ok()) << used.error().message;
  expect_flux_config_eq(*used, *cfg);

  auto got = run_flux(*ck, *used, case_name);
  ASSERT_TRUE(got.ok()) << got.error().message;
  auto base = run_flux(*base_ck, *cfg, case_name);
  ASSERT_TRUE(base.ok()) << base.error().message;
  expect_same_output(case_name, *got, *base);

  // Fused rows are views into the mapping; the swapped final modulation is the one copy.
  const int64_t dim = cfg->inner_dim();
  const std::string b0 = prefix + "double_blocks.0.", s0 = prefix + "single_blocks.0.";
  expect_view(*ck, "transformer_blocks.0.attn.to_q.weight", b0 + "img_attn.qkv.weight", 0);
  expect_view(*ck, "transformer_blocks.0.attn.to_k.weight", b0 + "img_attn.qkv.weight", dim);
  expect_view(*ck, "transformer_blocks.0.attn.add_v_proj.bias", b0 + "txt_attn.qkv.bias", 2 * dim);
  expect_view(*ck, "single_transformer_blocks.0.attn.to_q.weight", s0 + "linear1.weight", 0);
  expect_view(*ck, "single_transformer_blocks.0.attn.to_v.weight", s0 + "linear1.weight", 2 * dim);
  expect_view(*ck, "single_transformer_blocks.0.proj_mlp.weight", s0 + "linear1.weight", 3 * dim);
  expect_view(*ck, "single_transformer_blocks.0.proj_mlp.bias", s0 + "linear1.bias", 3 * dim);
  expect_view(*ck, "x_embedder.weight", prefix + "img_in.weight", 0);
  auto norm_out = ck->get("norm_out.linear.weight");
  ASSERT_TRUE(norm_out.ok());
  EXPECT_FALSE(norm_out->read_only()) << "the (shift, scale) swap should be a copy";
  EXPECT_EQ(ck->describe_alias("norm_out.linear.weight"),
            "'" + prefix + "final_layer.adaLN_modulation.1.weight' rows [" + std::to_string(dim) + ", " +
                std::to_string(2 * dim) + ") + '" + prefix + "final_layer.adaLN_modulation.1.weight' rows [0, " +
                std::to_string(dim) + ")");

  // Inference from shapes: everything but the RoPE axes, which head size 16 cannot give.
  const std::vector<int> axes = cfg->axes_dims_rope;
  for (const Checkpoint* c : {&ck.value(), &base_ck.value()}) {
    auto inferred = infer_flux_config(*c, &axes);
    ASSERT_TRUE(inferred.ok()) << inferred.error().message;
    expect_flux_config_eq(*inferred, *cfg);
    auto no_axes = infer_flux_config(*c);
    ASSERT_FALSE(no_axes.ok());
    expect_mentions(no_axes.error().message, {"axes_dims_rope", "16", "config.json"});
  }
  fs::remove(tmp.path() / "config.json");
  auto without = flux_config_for(file, *ck);
  ASSERT_FALSE(without.ok()) << "no config.json and head size 16: the RoPE axes cannot be inferred";
  expect_mentions(without.error().message, {file, "axes_dims_rope"});
}

TEST(SingleFile, FluxDevBflLayout) { check_flux_case("flux1_dev_transformer", "", "flux1-dev.safetensors"); }

TEST(SingleFile, FluxSchnellComfyPrefix) {
  check_flux_case("flux1_schnell_transformer", kComfy, "flux1-schnell.safetensors");
}

// --- SD3 ----------------------------------------------------------------------------------------------------

void check_sd3_case(const std::string& prefix, const Named& extra) {
  const std::string case_name = "sd35_large_transformer";
  TempDir tmp;
  const std::string dir = case_dir(case_name);
  auto cfg = SD3Config::from_json(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  Named converted = with_prefix(to_layout("sd3-stability", dir + "/" + kWeights), prefix);
  converted.insert(converted.end(), extra.begin(), extra.end());
  const std::string file = write_single_file(tmp.path(), "sd3.5_large.safetensors", converted, case_name, true);

  std::string layout;
  auto ck = open_transformer_checkpoint(file, &layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(layout, "sd3-stability");
  auto base_ck = Checkpoint::open_file(dir + "/" + kWeights);
  ASSERT_TRUE(base_ck.ok());
  EXPECT_EQ(ck->names(), base_ck->names());
  for (const auto& n : base_ck->names()) {
    auto ta = ck->get(n), tb = base_ck->get(n);
    ASSERT_TRUE(ta.ok() && tb.ok()) << n;
    EXPECT_EQ(ta->shape(), tb->shape()) << n;
    EXPECT_EQ(ta->to_vector(), tb->to_vector()) << n;
  }

  auto used = sd3_config_for(file, *ck);
  ASSERT_TRUE(used.ok()) << used.error().message;
  EXPECT_EQ(used->sample_size, cfg->sample_size) << "config.json beside the file should be read";
  auto got = run_sd3(*ck, *used, case_name);
  ASSERT_TRUE(got.ok()) << got.error().message;
  auto base = run_sd3(*base_ck, *cfg, case_name);
  ASSERT_TRUE(base.ok()) << base.error().message;
  expect_same_output(case_name, *got, *base);

  const int64_t dim = cfg->inner_dim();
  const std::string x0 = prefix + "joint_blocks.0.x_block.", c1 = prefix + "joint_blocks.1.context_block.";
  expect_view(*ck, "transformer_blocks.0.attn.to_q.weight", x0 + "attn.qkv.weight", 0);
  expect_view(*ck, "transformer_blocks.0.attn.to_v.bias", x0 + "attn.qkv.bias", 2 * dim);
  expect_view(*ck, "transformer_blocks.1.attn.add_k_proj.weight", c1 + "attn.qkv.weight", dim);
  expect_view(*ck, "pos_embed.proj.weight", prefix + "x_embedder.proj.weight", 0);
  for (const char* swapped : {"norm_out.linear.weight", "transformer_blocks.1.norm1_context.linear.bias"}) {
    auto t = ck->get(swapped);
    ASSERT_TRUE(t.ok());
    EXPECT_FALSE(t->read_only()) << swapped << ": the (shift, scale) swap should be a copy";
  }

  // Inference from shapes, with no config.json beside the file: all but sample_size, and the same output.
  for (const Checkpoint* c : {&ck.value(), &base_ck.value()}) {
    auto inferred = infer_sd3_config(*c);
    ASSERT_TRUE(inferred.ok()) << inferred.error().message;
    expect_sd3_config_eq(*inferred, *cfg);
  }
  fs::remove(tmp.path() / "config.json");
  auto inferred = sd3_config_for(file, *ck);
  ASSERT_TRUE(inferred.ok()) << inferred.error().message;
  expect_sd3_config_eq(*inferred, *cfg);
  EXPECT_EQ(inferred->sample_size, 128) << "diffusers' default";
  auto got2 = run_sd3(*ck, *inferred, case_name);
  ASSERT_TRUE(got2.ok()) << got2.error().message;
  expect_same_output(case_name, *got2, *base);
}

TEST(SingleFile, SD35LargeStabilityLayout) { check_sd3_case("", {}); }

TEST(SingleFile, SD35LargeComfyPrefixIgnoresOtherComponents) {
  // ComfyUI's all-in-one files also hold the VAE and text encoders outside the transformer's prefix.
  check_sd3_case(kComfy, {{"first_stage_model.decoder.conv_in.weight", test::random_tensor({4, 4}, 1)},
                          {"text_encoders.clip_l.logit_scale", test::random_tensor({1}, 2)}});
}

// --- a diffusers-layout checkpoint passes through ------------------------------------------------------------

TEST(SingleFile, DiffusersLayoutPassesThrough) {
  // A diffusers transformer/ folder (weights and config.json) and its weights file alone.
  TempDir tmp;
  for (const char* name : {"flux1_dev_transformer", "sd35_large_transformer"}) {
    const fs::path folder = tmp.path() / name;
    fs::create_directories(folder);
    for (const char* f : {kWeights, "config.json"}) fs::copy_file(fs::path(case_dir(name)) / f, folder / f);
    std::string layout;
    auto ck = open_transformer_checkpoint((folder / kWeights).string(), &layout);
    ASSERT_TRUE(ck.ok()) << ck.error().message;
    EXPECT_EQ(layout, "diffusers");
    auto dir_ck = open_transformer_checkpoint(folder.string(), &layout);
    ASSERT_TRUE(dir_ck.ok()) << dir_ck.error().message;
    EXPECT_EQ(layout, "diffusers");
    auto plain = Checkpoint::open_file(case_dir(name) + "/" + kWeights);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ(ck->names(), plain->names());
    EXPECT_EQ(dir_ck->names(), plain->names());
  }
  const std::string folder = (tmp.path() / "sd35_large_transformer").string();
  auto ck = open_transformer_checkpoint(folder, nullptr);
  ASSERT_TRUE(ck.ok());
  auto cfg = sd3_config_for(folder, *ck);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  EXPECT_EQ(cfg->sample_size, 8) << "the folder's config.json";
}

// --- errors ----------------------------------------------------------------------------------------------------

// A converted Flux fixture with one change: `edit` gets the converted list to alter.
std::string write_flux_variant(const TempDir& tmp, const std::function<void(Named&)>& edit) {
  Named t = to_layout("flux-bfl", case_dir("flux1_dev_transformer") + "/" + kWeights);
  edit(t);
  return write_single_file(tmp.path(), "flux1-dev.safetensors", t, "flux1_dev_transformer", false);
}

TEST(SingleFile, ExtraTensorDoesNotFit) {
  TempDir tmp;
  const std::string file = write_flux_variant(tmp, [](Named& t) {
    t.emplace_back("double_blocks.0.img_attn.lora_up.weight", test::random_tensor({2, 2}, 3));
  });
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {file, "'double_blocks.0.img_attn.lora_up.weight'", "flux-bfl"});
}

TEST(SingleFile, MissingSourceTensor) {
  TempDir tmp;
  const std::string file = write_flux_variant(tmp, [](Named& t) {
    std::erase_if(t, [](const auto& kv) { return kv.first == "single_blocks.1.linear1.bias"; });
  });
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {file, "missing tensor 'single_blocks.1.linear1.bias'"});
}

TEST(SingleFile, FusedQkvNotDivisibleByThree) {
  TempDir tmp;
  const std::string file = write_flux_variant(tmp, [](Named& t) {
    for (auto& kv : t)
      if (kv.first == "double_blocks.1.txt_attn.qkv.weight") kv.second = kv.second.slice(0, 0, kv.second.size(0) - 1);
  });
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {file, "'double_blocks.1.txt_attn.qkv.weight'", "[95, 32]"});
}

TEST(SingleFile, UnknownLayoutNamesFirstStrangeTensor) {
  TempDir tmp;
  const fs::path p = tmp.path() / "unet.safetensors";
  ASSERT_TRUE(save_safetensors(p.string(), {{"final_layer.linear.weight", test::random_tensor({2, 2}, 4)},
                                            {"input_blocks.0.0.weight", test::random_tensor({2, 2}, 5)},
                                            {"zzz.weight", test::random_tensor({2, 2}, 6)}})
                  .ok());
  auto ck = open_transformer_checkpoint(p.string(), nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {p.string(), "'input_blocks.0.0.weight'", "fits no known transformer layout"});
}

TEST(SingleFile, MixedLayoutsRejected) {
  TempDir tmp;
  const std::string file = write_flux_variant(tmp, [](Named& t) {
    t.emplace_back("joint_blocks.0.x_block.attn.qkv.weight", test::random_tensor({6, 2}, 7));
  });
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {file, "mixes tensors of the flux-bfl and sd3-stability layouts"});
}

TEST(SingleFile, NoBlocksNamesFirstTensor) {
  TempDir tmp;
  const fs::path p = tmp.path() / "head.safetensors";
  ASSERT_TRUE(save_safetensors(p.string(), {{"final_layer.linear.weight", test::random_tensor({2, 2}, 8)}}).ok());
  auto ck = open_transformer_checkpoint(p.string(), nullptr);
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {p.string(), "its first tensor is 'final_layer.linear.weight'"});
}

TEST(SingleFile, ShapeErrorNamesTheFusedSource) {
  // A config that disagrees with the weights: the message names the alias and the rows of the stored tensor.
  TempDir tmp;
  const std::string file = write_flux_variant(tmp, [](Named&) {});
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto w = ck->get("transformer_blocks.0.attn.to_k.weight", {32, 40});
  ASSERT_FALSE(w.ok());
  expect_mentions(w.error().message,
                  {file, "tensor 'transformer_blocks.0.attn.to_k.weight'",
                   "(from 'double_blocks.0.img_attn.qkv.weight' rows [32, 64))", "has shape [32, 32]"});
}

// --- the real models' shapes (header only) --------------------------------------------------------------------

using Shapes = std::vector<std::pair<std::string, Shape>>;

void add_linear(Shapes& s, const std::string& name, int64_t out, int64_t in) {
  s.push_back({name + ".weight", {out, in}});
  s.push_back({name + ".bias", {out}});
}

// black-forest-labs/FLUX.1-dev's flux1-dev.safetensors: 19 double + 38 single blocks, 3072 = 24 x 128.
Shapes flux1_dev_shapes(const std::string& prefix) {
  const int64_t D = 3072, H = 128;
  Shapes s;
  add_linear(s, "img_in", D, 64);
  add_linear(s, "txt_in", D, 4096);
  add_linear(s, "time_in.in_layer", D, 256);
  add_linear(s, "time_in.out_layer", D, D);
  add_linear(s, "vector_in.in_layer", D, 768);
  add_linear(s, "vector_in.out_layer", D, D);
  add_linear(s, "guidance_in.in_layer", D, 256);
  add_linear(s, "guidance_in.out_layer", D, D);
  for (int i = 0; i < 19; ++i) {
    const std::string b = "double_blocks." + std::to_string(i) + ".";
    for (const char* st : {"img", "txt"}) {
      const std::string x = b + st;
      add_linear(s, x + "_mod.lin", 6 * D, D);
      add_linear(s, x + "_attn.qkv", 3 * D, D);
      s.push_back({x + "_attn.norm.query_norm.scale", {H}});
      s.push_back({x + "_attn.norm.key_norm.scale", {H}});
      add_linear(s, x + "_attn.proj", D, D);
      add_linear(s, x + "_mlp.0", 4 * D, D);
      add_linear(s, x + "_mlp.2", D, 4 * D);
    }
  }
  for (int i = 0; i < 38; ++i) {
    const std::string b = "single_blocks." + std::to_string(i) + ".";
    add_linear(s, b + "linear1", 3 * D + 4 * D, D);
    add_linear(s, b + "linear2", D, D + 4 * D);
    s.push_back({b + "norm.query_norm.scale", {H}});
    s.push_back({b + "norm.key_norm.scale", {H}});
    add_linear(s, b + "modulation.lin", 3 * D, D);
  }
  add_linear(s, "final_layer.linear", 64, D);
  add_linear(s, "final_layer.adaLN_modulation.1", 2 * D, D);
  for (auto& kv : s) kv.first = prefix + kv.first;
  return s;
}

// stabilityai/stable-diffusion-3.5-large's sd3.5_large.safetensors: 38 joint blocks, 2432 = 38 x 64, RMS qk norm,
// a 192 x 192 position table; the last context block is pre-only.
Shapes sd35_large_shapes(const std::string& prefix) {
  const int64_t D = 2432, H = 64, L = 38;
  Shapes s;
  s.push_back({"pos_embed", {1, 192 * 192, D}});
  s.push_back({"x_embedder.proj.weight", {D, 16, 2, 2}});
  s.push_back({"x_embedder.proj.bias", {D}});
  add_linear(s, "t_embedder.mlp.0", D, 256);
  add_linear(s, "t_embedder.mlp.2", D, D);
  add_linear(s, "y_embedder.mlp.0", D, 2048);
  add_linear(s, "y_embedder.mlp.2", D, D);
  add_linear(s, "context_embedder", D, 4096);
  for (int64_t i = 0; i < L; ++i) {
    for (const char* blk : {"x_block", "context_block"}) {
      const std::string b = "joint_blocks." + std::to_string(i) + "." + blk + ".";
      const bool pre_only = i == L - 1 && std::string(blk) == "context_block";
      add_linear(s, b + "adaLN_modulation.1", (pre_only ? 2 : 6) * D, D);
      add_linear(s, b + "attn.qkv", 3 * D, D);
      s.push_back({b + "attn.ln_q.weight", {H}});
      s.push_back({b + "attn.ln_k.weight", {H}});
      if (!pre_only) {
        add_linear(s, b + "attn.proj", D, D);
        add_linear(s, b + "mlp.fc1", 4 * D, D);
        add_linear(s, b + "mlp.fc2", D, 4 * D);
      }
    }
  }
  add_linear(s, "final_layer.linear", 2 * 2 * 16, D);
  add_linear(s, "final_layer.adaLN_modulation.1", 2 * D, D);
  for (auto& kv : s) kv.first = prefix + kv.first;
  return s;
}

TEST(SingleFile, InferFlux1DevConfigFromRealShapes) {
  TempDir tmp;
  const std::string file = test::write_header_only(tmp.path() / "flux1-dev.safetensors", flux1_dev_shapes(""));
  std::string layout;
  auto ck = open_transformer_checkpoint(file, &layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(layout, "flux-bfl");
  auto cfg = flux_config_for(file, *ck);  // no config.json beside it
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  FluxConfig want;  // diffusers' defaults are FLUX.1's
  want.guidance_embeds = true;
  expect_flux_config_eq(*cfg, want);
  // The full-size model loads from the aliases (views; only norm_out's swap copies 37 MB of the hole).
  auto model = FluxTransformer::load(*ck, *cfg);
  EXPECT_TRUE(model.ok()) << model.error().message;
}

TEST(SingleFile, InferFlux1SchnellConfigFromRealShapesUnderComfyPrefix) {
  TempDir tmp;
  Shapes s = flux1_dev_shapes(kComfy);
  std::erase_if(s, [](const auto& kv) { return kv.first.find("guidance_in") != std::string::npos; });
  s.push_back({"vae.decoder.conv_in.weight", {512, 16, 3, 3}});
  const std::string file = test::write_header_only(tmp.path() / "flux1-schnell.safetensors", s);
  auto ck = open_transformer_checkpoint(file, nullptr);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto cfg = infer_flux_config(*ck);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  expect_flux_config_eq(*cfg, FluxConfig{});
}

TEST(SingleFile, InferSD35LargeConfigFromRealShapes) {
  TempDir tmp;
  const std::string file = test::write_header_only(tmp.path() / "sd3.5_large.safetensors", sd35_large_shapes(kComfy));
  std::string layout;
  auto ck = open_transformer_checkpoint(file, &layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(layout, "sd3-stability");
  auto cfg = sd3_config_for(file, *ck);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  // stabilityai/stable-diffusion-3.5-large transformer/config.json
  SD3Config want;
  want.num_layers = 38;
  want.num_attention_heads = 38;
  want.attention_head_dim = 64;
  want.caption_projection_dim = 2432;
  want.pooled_projection_dim = 2048;
  want.joint_attention_dim = 4096;
  want.pos_embed_max_size = 192;
  want.qk_norm = "rms_norm";
  expect_sd3_config_eq(*cfg, want);
  EXPECT_EQ(cfg->sample_size, 128);
  auto model = SD3Transformer::load(*ck, *cfg);
  EXPECT_TRUE(model.ok()) << model.error().message;
}

// --- the key maps inverted --------------------------------------------------------------------------------------

const TransformerArch* arch_of_preset(const std::string& preset, std::any* config) {
  for (const auto& a : transformer_archs())
    for (const auto& p : a.presets)
      if (p.name == preset) {
        *config = p.config();
        return &a;
      }
  return nullptr;
}

// A preset's weight spec through its layout's inverted key map.
std::map<std::string, Shape> inverted_spec(const std::string& preset, NamedShapes drop_or_add = {},
                                           std::string* error = nullptr) {
  std::any cfg;
  const TransformerArch* a = arch_of_preset(preset, &cfg);
  EXPECT_TRUE(a && !a->layouts.empty()) << preset;
  if (!a || a->layouts.empty()) return {};
  auto spec = weight_spec(*a, cfg, 1, 0);
  EXPECT_TRUE(spec.ok()) << spec.error().message;
  NamedShapes diffusers;
  for (const auto& w : *spec) diffusers.emplace_back(w.name, w.shape);
  for (const auto& change : drop_or_add) {  // an empty shape drops the tensor
    std::erase_if(diffusers, [&](const auto& kv) { return kv.first == change.first; });
    if (!change.second.empty()) diffusers.emplace_back(change.first, change.second);
  }
  auto stored = single_file_shapes(a->layouts[0], diffusers);
  if (error) *error = stored.ok() ? "" : stored.error().message;
  EXPECT_TRUE(stored.ok() || error) << stored.error().message;
  return stored.ok() ? std::map<std::string, Shape>(stored->begin(), stored->end()) : std::map<std::string, Shape>{};
}

std::map<std::string, Shape> as_map(const Shapes& s) { return {s.begin(), s.end()}; }

TEST(SingleFile, InvertedKeyMapsGiveTheRealFilesShapes) {
  EXPECT_EQ(inverted_spec("flux-dev"), as_map(flux1_dev_shapes("")));
  Shapes schnell = flux1_dev_shapes("");
  std::erase_if(schnell, [](const auto& kv) { return kv.first.find("guidance_in") != std::string::npos; });
  EXPECT_EQ(inverted_spec("flux-schnell"), as_map(schnell));
  EXPECT_EQ(inverted_spec("sd35-large"), as_map(sd35_large_shapes("")));
}

TEST(SingleFile, InverseNamesTheTensorItCannotPlace) {
  std::string error;
  inverted_spec("flux-schnell", {{"single_transformer_blocks.3.proj_mlp.bias", {}}}, &error);
  expect_mentions(error, {"flux-bfl", "missing tensor 'single_transformer_blocks.3.proj_mlp.bias'"});
  inverted_spec("sd35-large", {{"transformer_blocks.0.attn.lora_up.weight", {2, 2}}}, &error);
  expect_mentions(error, {"sd3-stability", "no rule takes tensor 'transformer_blocks.0.attn.lora_up.weight'"});
  inverted_spec("flux-dev", {{"transformer_blocks.0.attn.to_k.weight", {3072, 64}}}, &error);
  expect_mentions(error,
                  {"'double_blocks.0.img_attn.qkv.weight'", "'transformer_blocks.0.attn.to_k.weight'", "[3072, 64]"});
}

}  // namespace
