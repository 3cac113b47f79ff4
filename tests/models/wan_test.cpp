// What is specific to Wan's transformer: WanRotaryPosEmbed's 3-axis split of head_dim, the Conv3d patch
// layout in and out, the config's refusals and the forward's input errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "../test_util.h"
#include "app/convert_cmd.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "models/registry.h"
#include "models/transformers/wan.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string fixture() { return test::fixtures_dir() + "/wan22_t2v_transformer"; }
std::string fixture_weights() { return fixture() + "/diffusion_pytorch_model.safetensors"; }

const TransformerArch& wan_arch() {
  const TransformerArch* a = find_transformer_arch("WanTransformer3DModel");
  EXPECT_NE(a, nullptr);
  return *a;
}

const SingleFileLayout& wan_original_layout() {
  const auto& layouts = wan_arch().layouts;
  EXPECT_EQ(layouts.size(), 1u);
  EXPECT_EQ(layouts.at(0).name, "wan-original");
  return layouts.at(0);
}

// The fixture's forward from `ck` (any naming that answers to diffusers names) with the case's config.
Result<Tensor> run_fixture(const Checkpoint& ck) {
  MD_TRY(WanConfig cfg, WanConfig::from_json(fixture() + "/config.json"));
  MD_TRY(WanTransformer m, WanTransformer::load(ck, cfg));
  MD_TRY(auto in, SafetensorsFile::open(fixture() + "/inputs.safetensors"));
  MD_TRY(Tensor x, in->get("hidden_states"));
  MD_TRY(Tensor t, in->get("timestep"));
  MD_TRY(Tensor e, in->get("encoder_hidden_states"));
  return m.forward(x, t, e);
}

void expect_bit_equal(const Tensor& got, const Tensor& base) {
  ASSERT_EQ(got.shape(), base.shape());
  const std::vector<float> g = got.to_vector(), b = base.to_vector();
  size_t differ = 0;
  for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &b[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0u) << "of " << g.size() << " elements differ from the diffusers-named model's";
}

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

// --- Wan-AI's original names ----------------------------------------------------------------------------------

using Named = std::vector<std::pair<std::string, Tensor>>;

// The fixture's tensors renamed as Wan-AI's files name them (the wan-original key map inverted), under `prefix`.
Named fixture_in_original_names(const std::string& prefix) {
  auto ck = Checkpoint::open_file(fixture_weights());
  EXPECT_TRUE(ck.ok()) << ck.error().message;
  if (!ck.ok()) return {};
  Named diffusers;
  for (const auto& n : ck->names()) diffusers.emplace_back(n, ck->get(n).value());
  auto t = single_file_tensors(wan_original_layout(), diffusers);
  EXPECT_TRUE(t.ok()) << t.error().message;
  if (!t.ok()) return {};
  for (auto& kv : *t) kv.first = prefix + kv.first;
  return *t;
}

// A file with the original names (plain, and under ComfyUI's prefix) opens in the wan-original layout, answers to
// exactly the diffusers names with the same tensors, and its forward is the diffusers-named model's bit for bit.
TEST(Wan, OriginalNamesGiveTheDiffusersOutputBitForBit) {
  auto base_ck = Checkpoint::open_file(fixture_weights());
  ASSERT_TRUE(base_ck.ok()) << base_ck.error().message;
  auto base = run_fixture(*base_ck);
  ASSERT_TRUE(base.ok()) << base.error().message;
  for (const std::string prefix : {"", "model.diffusion_model."}) {
    SCOPED_TRACE("prefix '" + prefix + "'");
    const Named original = fixture_in_original_names(prefix);
    // The names Wan-AI's WanModel has (its state_dict), written out here rather than taken from the key map.
    std::set<std::string> names;
    for (const auto& kv : original) names.insert(kv.first);
    for (const char* n :
         {"patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias", "time_embedding.0.weight",
          "time_embedding.2.bias", "time_projection.1.weight", "blocks.0.self_attn.q.weight",
          "blocks.0.self_attn.o.bias", "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.k.weight",
          "blocks.0.cross_attn.norm_k.weight", "blocks.0.norm3.weight", "blocks.0.norm3.bias", "blocks.0.ffn.0.weight",
          "blocks.0.ffn.2.bias", "blocks.0.modulation", "head.head.weight", "head.head.bias", "head.modulation"})
      EXPECT_TRUE(names.count(prefix + n)) << n;
    // Pairs from diffusers' convert_wan_to_diffusers.py, by hand: the same values under both names.
    const std::map<std::string, Tensor> by_name(original.begin(), original.end());
    for (const auto& [o, d] : std::vector<std::pair<std::string, std::string>>{
             {"blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight"},
             {"blocks.1.self_attn.k.weight", "blocks.1.attn1.to_k.weight"},
             {"blocks.0.cross_attn.v.weight", "blocks.0.attn2.to_v.weight"},
             {"blocks.1.cross_attn.o.bias", "blocks.1.attn2.to_out.0.bias"},
             {"blocks.1.self_attn.norm_q.weight", "blocks.1.attn1.norm_q.weight"},
             {"blocks.0.norm3.weight", "blocks.0.norm2.weight"},
             {"blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight"},
             {"blocks.1.ffn.2.weight", "blocks.1.ffn.net.2.weight"},
             {"blocks.1.modulation", "blocks.1.scale_shift_table"},
             {"text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"},
             {"time_embedding.2.weight", "condition_embedder.time_embedder.linear_2.weight"},
             {"time_projection.1.bias", "condition_embedder.time_proj.bias"},
             {"head.head.weight", "proj_out.weight"},
             {"head.modulation", "scale_shift_table"}}) {
      auto it = by_name.find(prefix + o);
      ASSERT_NE(it, by_name.end()) << o;
      EXPECT_EQ(it->second.to_vector(), base_ck->get(d).value().to_vector()) << o << " is not " << d;
    }
    for (const auto& n : names)
      for (const char* diffusers_part : {"condition_embedder", "attn1", "attn2", "scale_shift_table", "proj_out"})
        EXPECT_EQ(n.find(diffusers_part), std::string::npos) << n;

    const test::TempDir tmp(prefix.empty() ? "plain" : "comfy");
    const std::string file = tmp.str() + "/wan2.2_t2v_low_noise_14B_fp16.safetensors";
    ASSERT_TRUE(save_safetensors(file, original).ok());
    fs::copy_file(fixture() + "/config.json", tmp.path() / "config.json");
    auto opened = open_transformer(file);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ(opened->layout, "wan-original");
    EXPECT_EQ(opened->arch, &wan_arch());
    EXPECT_EQ(opened->ck.names(), base_ck->names()) << "the aliases are not exactly the diffusers names";
    for (const auto& n : base_ck->names()) {
      auto a = opened->ck.get(n), b = base_ck->get(n);
      ASSERT_TRUE(a.ok() && b.ok()) << n;
      EXPECT_EQ(a->shape(), b->shape()) << n;
      EXPECT_EQ(a->to_vector(), b->to_vector()) << n;
    }
    auto got = run_fixture(opened->ck);
    ASSERT_TRUE(got.ok()) << got.error().message;
    expect_bit_equal(*got, *base);
  }
}

// `meshdit convert` writes a Wan GGUF as city96's tools do: general.architecture "wan", the original names, the
// 5-D patch embedding's shape in comfy.gguf.orig_shape. Such a file loads through open_transformer (the path of
// --transformer, bench transformer and check --quantize): as stored (f32) bit for bit, quantized to q8_0 close.
TEST(Wan, GgufWithArchitectureWanAndOriginalNamesLoads) {
  auto base_ck = Checkpoint::open_file(fixture_weights());
  ASSERT_TRUE(base_ck.ok());
  auto base = run_fixture(*base_ck);
  ASSERT_TRUE(base.ok()) << base.error().message;
  const test::TempDir tmp;
  fs::copy_file(fixture() + "/config.json", tmp.path() / "config.json");
  for (const std::string type : {"", "q8_0"}) {
    SCOPED_TRACE("--type '" + type + "'");
    ConvertCommand cv;
    cv.source = fixture_weights();
    cv.output = tmp.str() + "/wan-" + (type.empty() ? "f32" : type) + ".gguf";
    cv.type = type;
    const Status st = convert_checkpoint(cv, nullptr);
    ASSERT_TRUE(st.ok()) << st.error().message;
    auto raw = Checkpoint::open_file(cv.output);
    ASSERT_TRUE(raw.ok()) << raw.error().message;
    EXPECT_TRUE(raw->has_gguf());
    EXPECT_EQ(raw->file_metadata("general.architecture"), "wan");
    auto pe = raw->shape_of("patch_embedding.weight");
    ASSERT_TRUE(pe.ok()) << pe.error().message;
    EXPECT_EQ(pe->size(), 5u) << shape_str(*pe);
    EXPECT_TRUE(raw->shape_of("blocks.1.self_attn.q.weight").ok());
    EXPECT_TRUE(raw->shape_of("head.modulation").ok());

    auto opened = open_transformer(cv.output);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ(opened->layout, "wan-original");
    EXPECT_EQ(opened->arch, &wan_arch());
    auto model = opened->arch->load(opened->ck, opened->config, nullptr);
    ASSERT_TRUE(model.ok()) << model.error().message;
    auto got = run_fixture(opened->ck);
    ASSERT_TRUE(got.ok()) << got.error().message;
    if (type.empty()) {
      expect_bit_equal(*got, *base);
    } else {
      const double e = test::rel_l2(*got, *base);
      EXPECT_GT(e, 0.0) << "nothing was quantized";
      EXPECT_LT(e, 2e-2);
    }
  }
}

using Shapes = std::vector<std::pair<std::string, Shape>>;

void add_linear(Shapes& s, const std::string& name, int64_t out, int64_t in) {
  s.push_back({name + ".weight", {out, in}});
  s.push_back({name + ".bias", {out}});
}

// Wan-AI/Wan2.1-T2V-1.3B's diffusion_pytorch_model.safetensors as its WanModel names and shapes it: 30 blocks,
// 1536 = 12 x 128, ffn 8960, UMT5's 4096-wide text, 256 frequencies, 16 latent channels, patch (1, 2, 2).
Shapes wan21_t2v_1_3b_shapes(const std::string& prefix) {
  const int64_t D = 1536, F = 8960;
  Shapes s;
  s.push_back({"patch_embedding.weight", {D, 16, 1, 2, 2}});
  s.push_back({"patch_embedding.bias", {D}});
  add_linear(s, "text_embedding.0", D, 4096);
  add_linear(s, "text_embedding.2", D, D);
  add_linear(s, "time_embedding.0", D, 256);
  add_linear(s, "time_embedding.2", D, D);
  add_linear(s, "time_projection.1", 6 * D, D);
  for (int i = 0; i < 30; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const char* attn : {"self_attn.", "cross_attn."}) {
      for (const char* p : {"q", "k", "v", "o"}) add_linear(s, b + attn + p, D, D);
      s.push_back({b + attn + "norm_q.weight", {D}});
      s.push_back({b + attn + "norm_k.weight", {D}});
    }
    s.push_back({b + "norm3.weight", {D}});
    s.push_back({b + "norm3.bias", {D}});
    add_linear(s, b + "ffn.0", F, D);
    add_linear(s, b + "ffn.2", D, F);
    s.push_back({b + "modulation", {1, 6, D}});
  }
  add_linear(s, "head.head", 16 * 4, D);
  s.push_back({"head.modulation", {1, 2, D}});
  for (auto& kv : s) kv.first = prefix + kv.first;
  return s;
}

WanConfig wan21_t2v_1_3b() {  // its diffusers config.json
  WanConfig c;
  c.num_layers = 30;
  c.num_attention_heads = 12;
  c.attention_head_dim = 128;
  c.ffn_dim = 8960;
  return c;
}

void expect_wan_config_eq(const WanConfig& a, const WanConfig& b) {
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.attention_head_dim, b.attention_head_dim);
  EXPECT_EQ(a.ffn_dim, b.ffn_dim);
  EXPECT_EQ(a.text_dim, b.text_dim);
  EXPECT_EQ(a.freq_dim, b.freq_dim);
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.patch_size, b.patch_size);
  EXPECT_EQ(a.cross_attn_norm, b.cross_attn_norm);
}

// The loader's weights for the real config, through the inverted key map, are the real file's names and shapes.
TEST(Wan, InvertedKeyMapGivesTheRealFilesShapes) {
  auto spec = weight_spec(wan_arch(), std::any(wan21_t2v_1_3b()), 1, 0);
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  NamedShapes diffusers;
  for (const auto& w : *spec) diffusers.emplace_back(w.name, w.shape);
  auto stored = single_file_shapes(wan_original_layout(), diffusers);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  const Shapes want = wan21_t2v_1_3b_shapes("");
  using ShapeMap = std::map<std::string, Shape>;
  EXPECT_EQ(ShapeMap(stored->begin(), stored->end()), ShapeMap(want.begin(), want.end()));
}

// A header with the real shapes and no config.json beside it: the layout is detected, the config inferred from the
// aliased tensors is the real one, and the model loads.
TEST(Wan, InferWan21ConfigFromRealShapesInOriginalNames) {
  for (const std::string prefix : {"", "model.diffusion_model."}) {
    SCOPED_TRACE("prefix '" + prefix + "'");
    const test::TempDir tmp(prefix.empty() ? "plain" : "comfy");
    const std::string file =
        test::write_header_only(tmp.path() / "wan2.1_t2v_1.3B_bf16.safetensors", wan21_t2v_1_3b_shapes(prefix));
    auto opened = open_transformer(file);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ(opened->layout, "wan-original");
    ASSERT_EQ(opened->arch, &wan_arch());
    const WanConfig& c = std::any_cast<const WanConfig&>(opened->config);
    expect_wan_config_eq(c, wan21_t2v_1_3b());
    auto model = WanTransformer::load(opened->ck, c);
    EXPECT_TRUE(model.ok()) << model.error().message;
  }
}

// Image-to-video files (CLIP image embedder, image cross-attention) are refused by name, not half-loaded.
TEST(Wan, ImageToVideoOriginalFileIsRefusedByName) {
  for (const auto& [extra, shape] : {std::pair<std::string, Shape>{"img_emb.proj.1.weight", {1536, 1280}},
                                     {"blocks.0.cross_attn.k_img.weight", {1536, 1536}}}) {
    Shapes s = wan21_t2v_1_3b_shapes("");
    s.push_back({extra, shape});
    const test::TempDir tmp;
    const std::string file = test::write_header_only(tmp.path() / "wan2.1_i2v.safetensors", s);
    auto ck = open_transformer_checkpoint(file, nullptr);
    ASSERT_FALSE(ck.ok()) << extra;
    EXPECT_NE(ck.error().message.find("'" + extra + "'"), std::string::npos) << ck.error().message;
    EXPECT_NE(ck.error().message.find("image-to-video"), std::string::npos) << ck.error().message;
  }
}

}  // namespace
