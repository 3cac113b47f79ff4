// The shared denoising loop with fake predictors and a fake scheduler whose step returns the guided
// prediction, so that latents.step<i> is exactly what the loop combined at step i: every guidance mode
// against values computed by hand, the expert switch, recording names and the step callback.
#include "pipelines/denoise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "backend/ops.h"
#include "echo_scheduler.h"

using namespace meshdit;

namespace {

using test::EchoScheduler;

// A prediction of `value` everywhere, shaped like the latents.
Tensor constant_like(const Tensor& x, float value) { return ops::full(x.shape(), value); }

// Predicts `cond` for the prompt and `uncond` for the negative one (the batch [uncond; cond] for a Pair),
// recording the latents and the timestep as its inputs, and logging which branch each call had.
Predictor constant_predictor(float cond, float uncond, std::vector<Branch>* calls = nullptr) {
  return [=](const Tensor& x, float t, Branch b, TensorMap* inputs) -> Result<Tensor> {
    if (calls) calls->push_back(b);
    if (inputs) {
      (*inputs)["hidden_states"] = x;
      (*inputs)["timestep"] = ops::full({x.size(0)}, t);
    }
    if (b == Branch::Pair) {
      const int64_t B = x.size(0) / 2;
      return concat({constant_like(x.slice(0, 0, B), uncond), constant_like(x.slice(0, B, 2 * B), cond)}, 0);
    }
    return constant_like(x, b == Branch::Cond ? cond : uncond);
  };
}

void expect_all(const Tensor& t, float value) {
  for (float v : t.to_vector()) ASSERT_FLOAT_EQ(v, value);
}

void expect_values(const Tensor& t, const std::vector<float>& want, float tol = 1e-5f) {
  const std::vector<float> got = t.to_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

struct Run {
  Tensor latents;
  TensorMap record;
};

Result<Run> run(const DenoiseSetup& setup, std::vector<float> timesteps, Shape shape = {2, 3, 4}) {
  const Mesh mesh = Mesh::single();
  EchoScheduler sched(std::move(timesteps));
  Run r;
  MD_TRY(r.latents, denoise(setup, sched, Tensor::zeros(shape), mesh.cfg(), &r.record));
  return r;
}

DenoiseSetup one_expert(Predictor p, float scale, CfgMode mode) {
  DenoiseSetup s;
  s.experts = {Expert{"transformer", std::move(p), scale}};
  s.guidance.mode = mode;
  return s;
}

TEST(Denoise, NoGuidanceCallsThePromptOnlyAndIgnoresTheScale) {
  std::vector<Branch> calls;
  auto r = run(one_expert(constant_predictor(3, 1, &calls), 7.0f, CfgMode::None), {1000, 500});
  ASSERT_TRUE(r.ok()) << r.error().message;
  expect_all(r->latents, 3.0f);
  EXPECT_EQ(calls, (std::vector<Branch>{Branch::Cond, Branch::Cond}));
}

TEST(Denoise, TwoCallsPromptFirstThenUncondPlusScaleTimesDifference) {
  std::vector<Branch> calls;
  auto r = run(one_expert(constant_predictor(3, 1, &calls), 2.5f, CfgMode::TwoCalls), {1000});
  ASSERT_TRUE(r.ok()) << r.error().message;
  expect_all(r->latents, 6.0f);  // 1 + 2.5 * (3 - 1)
  EXPECT_EQ(calls, (std::vector<Branch>{Branch::Cond, Branch::Uncond}));
  expect_all(r->record.at("transformer.call0.sample"), 3.0f);
  expect_all(r->record.at("transformer.call1.sample"), 1.0f);
}

TEST(Denoise, BatchedIsOneCallOnUncondThenCond) {
  std::vector<Branch> calls;
  Shape seen;
  Predictor p = [&](const Tensor& x, float t, Branch b, TensorMap* in) {
    seen = x.shape();
    return constant_predictor(3, 1, &calls)(x, t, b, in);
  };
  auto r = run(one_expert(p, 2.0f, CfgMode::Batched), {1000});
  ASSERT_TRUE(r.ok()) << r.error().message;
  expect_all(r->latents, 5.0f);  // 1 + 2 * (3 - 1); the halves swapped would give 3 + 2 * (1 - 3) = -1
  EXPECT_EQ(calls, (std::vector<Branch>{Branch::Pair}));
  EXPECT_EQ(seen, (Shape{4, 3, 4}));  // the latents repeated for the two halves
  EXPECT_EQ(r->record.at("transformer.call0.hidden_states").shape(), (Shape{4, 3, 4}));
  EXPECT_EQ(r->record.at("transformer.call0.sample").shape(), (Shape{4, 3, 4}));
}

// rescale_noise_cfg by hand. Sample 0: cond (1, 2, 3, 4), uncond 1, w = 3 -> cfg (1, 4, 7, 10);
// std(cond) = sqrt(5/3), std(cfg) = 3 sqrt(5/3), ratio 1/3; phi = 1/2: (cfg / 3 + cfg) / 2 = 2/3 cfg.
// Sample 1: cond (0, 0, 0, 2), uncond 1/2, w = 2 -> cfg (-1/2, -1/2, -1/2, 7/2) = 2 cond - 1/2, ratio 1/2
// -> 3/4 cfg. (Not uncond 0: GCC 12 at -O2 -march=native with AVX-512 builds the initializer
// {1, 1, 1, 1, 0, 0, 0, 0} as eight ones.)
TEST(Denoise, GuidanceRescaleMatchesHandComputedValues) {
  const Tensor cond = Tensor::from_f32({2, 4}, {1, 2, 3, 4, 0, 0, 0, 2});
  const Tensor uncond = Tensor::from_f32({2, 4}, {1, 1, 1, 1, 0.5f, 0.5f, 0.5f, 0.5f});
  // w differs per sample here, so each sample is guided on its own and the two rescaled together.
  const Tensor cfg = concat({ops::lerp(uncond.slice(0, 0, 1), cond.slice(0, 0, 1), 3.0f),
                             ops::lerp(uncond.slice(0, 1, 2), cond.slice(0, 1, 2), 2.0f)},
                            0);
  expect_values(cfg, {1, 4, 7, 10, -0.5f, -0.5f, -0.5f, 3.5f});
  expect_values(rescale_noise_cfg(cfg, cond, 0.5f),
                {2.0f / 3, 8.0f / 3, 14.0f / 3, 20.0f / 3, -0.375f, -0.375f, -0.375f, 2.625f});
  // Through guide(): one scale for the batch.
  Guidance g;
  g.rescale = 0.5f;
  expect_values(guide(cond.slice(0, 0, 1), uncond.slice(0, 0, 1), 3.0f, g), {2.0f / 3, 8.0f / 3, 14.0f / 3, 20.0f / 3});
  // phi = 0 is plain CFG.
  expect_values(rescale_noise_cfg(cfg, cond, 0.0f), {1, 4, 7, 10, -0.5f, -0.5f, -0.5f, 3.5f});
}

// Qwen-Image: token 0 cond (3, 4), uncond (1, 0), w = 2 -> comb (5, 8), scaled by 5 / sqrt(89);
// token 1 cond (0, 1), uncond 0 -> comb (0, 2), scaled by 1 / 2.
TEST(Denoise, KeepCondNormScalesEachTokenToTheConditionalNorm) {
  const Tensor cond = Tensor::from_f32({1, 2, 2}, {3, 4, 0, 1});
  const Tensor uncond = Tensor::from_f32({1, 2, 2}, {1, 0, 0, 0});
  Guidance g;
  g.keep_cond_norm = true;
  const float s = 5.0f / std::sqrt(89.0f);
  const Tensor v = guide(cond, uncond, 2.0f, g);
  EXPECT_EQ(v.shape(), cond.shape());
  expect_values(v, {5 * s, 8 * s, 0, 1});
}

TEST(Denoise, ExpertSwitchesBelowTheBoundaryWithItsOwnScale) {
  DenoiseSetup s;
  s.experts = {Expert{"transformer", constant_predictor(2, 1), 4.0f},
               Expert{"transformer_2", constant_predictor(2, 1), 3.0f}};
  s.boundary = 875.0f;
  s.guidance.mode = CfgMode::TwoCalls;
  EXPECT_EQ(&expert_at(s, 875.0f), &s.experts[0]) << "t >= boundary is the high-noise expert";
  EXPECT_EQ(&expert_at(s, 874.9f), &s.experts[1]);
  auto r = run(s, {1000, 900, 800, 700});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::vector<float> want = {5, 5, 4, 4};  // 1 + 4 (2 - 1), then 1 + 3 (2 - 1)
  for (size_t i = 0; i < want.size(); ++i) expect_all(r->record.at("latents.step" + std::to_string(i)), want[i]);
  // Calls are numbered across experts, as diffusers' reference hooks count them.
  for (int c : {0, 1, 2, 3}) EXPECT_TRUE(r->record.count("transformer.call" + std::to_string(c) + ".sample")) << c;
  for (int c : {4, 5, 6, 7}) EXPECT_TRUE(r->record.count("transformer_2.call" + std::to_string(c) + ".sample")) << c;
}

TEST(Denoise, RecordsExactlyTheReferenceNames) {
  auto r = run(one_expert(constant_predictor(3, 1), 2.0f, CfgMode::TwoCalls), {1000, 500});
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::set<std::string> names;
  for (const auto& kv : r->record) names.insert(kv.first);
  std::set<std::string> want = {"scheduler.timesteps", "latents.step0", "latents.step1"};
  for (int c = 0; c < 4; ++c)
    for (const char* n : {"hidden_states", "timestep", "sample"})
      want.insert("transformer.call" + std::to_string(c) + "." + n);
  EXPECT_EQ(names, want);
  expect_values(r->record.at("scheduler.timesteps"), {1000, 500});
  expect_all(r->record.at("transformer.call2.timestep"), 500.0f);
  // Call 2 is step 1's first call: it sees the latents step 0 produced.
  expect_all(r->record.at("transformer.call2.hidden_states"), 5.0f);
}

TEST(Denoise, StepCallbackFollowsEveryStep) {
  const Mesh mesh = Mesh::single();
  EchoScheduler sched({1000, 750, 500});
  std::vector<std::pair<int64_t, int64_t>> seen;
  auto r = denoise(one_expert(constant_predictor(1, 0), 1.0f, CfgMode::None), sched, Tensor::zeros({1, 2}), mesh.cfg(),
                   nullptr, [&](int64_t i, int64_t n, double s) {
                     EXPECT_GE(s, 0.0);
                     seen.push_back({i, n});
                   });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(seen, (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {1, 3}, {2, 3}}));
}

TEST(Denoise, ExpertCountMustMatchTheBoundary) {
  DenoiseSetup s = one_expert(constant_predictor(1, 0), 1.0f, CfgMode::None);
  s.boundary = 500.0f;
  auto r = run(s, {1000});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("boundary"), std::string::npos) << r.error().message;
}

TEST(Denoise, PredictorErrorStopsTheLoop) {
  int calls = 0;
  Predictor p = [&](const Tensor&, float, Branch, TensorMap*) -> Result<Tensor> {
    ++calls;
    return make_error("model exploded");
  };
  auto r = run(one_expert(p, 1.0f, CfgMode::TwoCalls), {1000, 500});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "model exploded");
  EXPECT_EQ(calls, 1);
}

}  // namespace
