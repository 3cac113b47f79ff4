// What sets UMT5 apart from T5 v1.1 in the shared encoder: the config's model_type selects a position-bias
// table per layer, every table is required and used; and WanPipeline's trimming of the encoder's output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../test_util.h"
#include "encoders/t5.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

using namespace meshdit;

namespace {

std::string umt5_dir() { return test::fixtures_dir() + "/text_umt5"; }

Tensor reference(const std::string& name) {
  auto f = SafetensorsFile::open(umt5_dir() + "/outputs.safetensors");
  EXPECT_TRUE(f.ok());
  auto t = (*f)->get(name);
  EXPECT_TRUE(t.ok()) << name;
  return t.ok() ? t.value() : Tensor();
}

Tensor input(const std::string& name) {
  auto f = SafetensorsFile::open(umt5_dir() + "/inputs.safetensors");
  EXPECT_TRUE(f.ok());
  auto t = (*f)->get(name);
  EXPECT_TRUE(t.ok()) << name;
  return t.ok() ? t.value() : Tensor();
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, double(std::fabs(x[i] - y[i])));
  return m;
}

TEST(UMT5, ModelTypeSelectsABiasTablePerLayer) {
  auto u = T5Config::from_json(umt5_dir() + "/config.json");
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_TRUE(u->bias_per_layer);
  auto t = T5Config::from_json(test::fixtures_dir() + "/text_t5/config.json");
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_FALSE(t->bias_per_layer);
}

// Layer 1's own table matters: read as T5 (layer 0's bias shared), the output moves far from the reference.
TEST(UMT5, EveryLayersTableIsUsed) {
  auto cfg = T5Config::from_json(umt5_dir() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  auto ck = Checkpoint::open(umt5_dir() + "/model.safetensors");
  ASSERT_TRUE(ck.ok());
  const Tensor ids = input("input_ids"), mask = input("attention_mask"), want = reference("last_hidden_state");
  auto umt5 = T5Encoder::load(ck.value(), cfg.value());
  ASSERT_TRUE(umt5.ok()) << umt5.error().message;
  auto got = umt5->forward(ids, mask);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_LT(max_abs_diff(got.value(), want), 4e-4);

  T5Config as_t5 = cfg.value();
  as_t5.bias_per_layer = false;
  auto t5 = T5Encoder::load(ck.value(), as_t5);
  ASSERT_TRUE(t5.ok()) << t5.error().message;
  auto shared = t5->forward(ids, mask);
  ASSERT_TRUE(shared.ok());
  EXPECT_GT(max_abs_diff(shared.value(), want), 1e-2);
}

TEST(UMT5, MissingLayerTableIsNamed) {
  auto cfg = T5Config::from_json(umt5_dir() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  auto f = SafetensorsFile::open(umt5_dir() + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  const std::string dropped = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
  std::vector<std::pair<std::string, Tensor>> kept;
  for (const auto& n : (*f)->names()) {
    if (n == dropped) continue;
    auto t = (*f)->get(n);
    ASSERT_TRUE(t.ok());
    kept.emplace_back(n, t.value());
  }
  ASSERT_EQ(kept.size() + 1, (*f)->names().size()) << "the fixture should store " << dropped;
  test::TempDir dir;
  const std::string path = dir.str() + "/model.safetensors";
  ASSERT_TRUE(save_safetensors(path, kept).ok());
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok());
  auto m = T5Encoder::load(ck.value(), cfg.value());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find(dropped), std::string::npos) << m.error().message;
}

// WanPipeline: [u[:v] for u, v in zip(prompt_embeds, seq_lens)], each zero-padded to max_sequence_length.
TEST(UMT5, TrimPromptEmbedsKeepsEachRowsLengthAndZeroPads) {
  const int64_t B = 2, L = 4, D = 3;
  std::vector<float> v(size_t(B * L * D));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 1.0f + float(i);
  const Tensor h = Tensor::from_f32({B, L, D}, v);
  auto r = trim_prompt_embeds(h, {2, 4}, 6);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->shape(), (Shape{B, 6, D}));
  const std::vector<float> got = r->to_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < 6; ++l)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t n = b == 0 ? 2 : 4;
        const float want = l < n ? v[size_t((b * L + l) * D + d)] : 0.0f;
        EXPECT_EQ(got[size_t((b * 6 + l) * D + d)], want) << b << " " << l << " " << d;
      }
  // An empty row is all padding.
  auto empty = trim_prompt_embeds(h, {0, 1}, 4);
  ASSERT_TRUE(empty.ok());
  for (int64_t i = 0; i < L * D; ++i) EXPECT_EQ(empty->to_vector()[size_t(i)], 0.0f);

  EXPECT_FALSE(trim_prompt_embeds(h, {2}, 4).ok());     // one length for two rows
  EXPECT_FALSE(trim_prompt_embeds(h, {5, 1}, 8).ok());  // longer than the encoded rows
  EXPECT_FALSE(trim_prompt_embeds(h, {4, 1}, 3).ok());  // longer than max_sequence_length
  EXPECT_FALSE(trim_prompt_embeds(h, {-1, 1}, 4).ok());
  EXPECT_FALSE(trim_prompt_embeds(h.reshape({B * L, D}), {1}, 4).ok());
}

// The fixture's wan_prompt_embeds from the fixture's own last_hidden_state and mask lengths.
TEST(UMT5, TrimMatchesTheReference) {
  const Tensor mask = input("attention_mask");
  std::vector<int64_t> lens;
  for (int64_t b = 0; b < mask.size(0); ++b) {
    int64_t n = 0;
    for (int64_t j = 0; j < mask.size(1); ++j) n += mask.data<int64_t>()[b * mask.size(1) + j] > 0;
    lens.push_back(n);
  }
  const Tensor last = reference("last_hidden_state");
  auto r = trim_prompt_embeds(last, lens, last.size(1));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(max_abs_diff(r.value(), reference("wan_prompt_embeds")), 0.0);
}

}  // namespace
