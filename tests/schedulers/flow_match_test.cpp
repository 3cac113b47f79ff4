// FlowMatchEulerScheduler: step() arithmetic (float32, each operation rounded), step-index bookkeeping, the
// set_timesteps variants and their errors, and the pipeline helpers against the values the reference cases
// recorded in meta.json.
#include "schedulers/flow_match.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "../test_util.h"

using namespace meshdit;

namespace {

// Single float32 operations, each result stored through a volatile so that the compiler cannot fuse a product
// into the following addition (this file is built with the project's default contraction).
float mul32(float a, float b) {
  volatile float r = a * b;
  return r;
}
float add32(float a, float b) {
  volatile float r = a + b;
  return r;
}
float sub32(float a, float b) {
  volatile float r = a - b;
  return r;
}

FlowMatchConfig config_from(const std::string& text) {
  auto c = FlowMatchConfig::from_json(Json::parse(text), "scheduler_config.json");
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  return c.ok() ? c.value() : FlowMatchConfig{};
}

FlowMatchEulerScheduler make(const FlowMatchConfig& cfg) {
  auto s = FlowMatchEulerScheduler::create(cfg);
  EXPECT_TRUE(s.ok());
  return std::move(s).value();
}

Json case_meta(const std::string& name) {
  std::string dir = test::fixtures_dir() + "/" + name;
  if (!std::filesystem::exists(dir)) dir = test::repo_dir() + "/tests/fixtures/" + name;
  auto j = load_json(dir + "/meta.json");
  EXPECT_TRUE(j.ok());
  return j.ok() ? j.value() : Json();
}

TEST(FlowMatch, StepIsFloat32Euler) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 3.0})"));
  ASSERT_TRUE(s.set_timesteps(28, std::nullopt, std::nullopt).ok());
  Tensor x = test::random_tensor({2, 4, 3, 5}, 1);
  std::vector<Tensor> outs;
  for (int i = 0; i < 3; ++i) {
    Tensor m = test::random_tensor({2, 4, 3, 5}, 10 + i);
    const float t = s.timesteps()[size_t(i)];
    auto r = s.step(m, t, x);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->shape(), x.shape());
    const float dt = sub32(s.sigmas()[size_t(i) + 1], s.sigmas()[size_t(i)]);
    for (int64_t k = 0; k < x.numel(); ++k)
      ASSERT_EQ(r->f32()[k], add32(x.f32()[k], mul32(dt, m.f32()[k]))) << "step " << i << " element " << k;
    EXPECT_EQ(s.step_index(), std::optional<int64_t>(i + 1));
    x = r.value();
  }
}

TEST(FlowMatch, StepKeepsModelOutputDtype) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 1.0})"));
  ASSERT_TRUE(s.set_timesteps(4, std::nullopt, std::nullopt).ok());
  Tensor x = test::random_tensor({8}, 2);
  Tensor m = test::random_tensor({8}, 3).to(DType::BF16);
  auto r = s.step(m, s.timesteps()[0], x);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->dtype(), DType::BF16);
}

TEST(FlowMatch, StepErrors) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 3.0})"));
  Tensor x = test::random_tensor({4}, 1);
  EXPECT_FALSE(s.step(x, 1000.0f, x).ok());  // no set_timesteps yet
  ASSERT_TRUE(s.set_timesteps(2, std::nullopt, std::nullopt).ok());
  EXPECT_FALSE(s.step(test::random_tensor({5}, 2), s.timesteps()[0], x).ok());  // shape mismatch
  auto bad = s.step(x, 123.25f, x);                                             // not a scheduled timestep
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("not one of the scheduler's timesteps"), std::string::npos);
  ASSERT_TRUE(s.step(x, s.timesteps()[0], x).ok());
  ASSERT_TRUE(s.step(x, s.timesteps()[1], x).ok());
  auto past = s.step(x, s.timesteps()[1], x);  // the schedule has 2 steps
  ASSERT_FALSE(past.ok());
  EXPECT_NE(past.error().message.find("past the end"), std::string::npos);
}

TEST(FlowMatch, FirstStepIndexFollowsDiffusers) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 1.0})"));
  // A repeated timestep: index_for_timestep takes the second occurrence.
  ASSERT_TRUE(s.set_timesteps(std::nullopt, std::vector<double>{1.0, 0.5, 0.5, 0.25}, std::nullopt).ok());
  auto i = s.index_for_timestep(500.0f);
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i.value(), 2);
  EXPECT_EQ(s.index_for_timestep(1000.0f).value(), 0);
  // Starting from the middle (img2img) locates the step; set_begin_index overrides the lookup.
  Tensor x = test::random_tensor({4}, 1), m = test::random_tensor({4}, 2);
  ASSERT_TRUE(s.step(m, 250.0f, x).ok());
  EXPECT_EQ(s.step_index(), std::optional<int64_t>(4));
  ASSERT_TRUE(s.set_timesteps(std::nullopt, std::vector<double>{1.0, 0.5, 0.5, 0.25}, std::nullopt).ok());
  s.set_begin_index(1);
  ASSERT_TRUE(s.step(m, 1000.0f, x).ok());
  EXPECT_EQ(s.step_index(), std::optional<int64_t>(2));
}

TEST(FlowMatch, DefaultScheduleIsShiftedLinspace) {
  // SD3: no custom sigmas; float64 linspace over [sigma_max, sigma_min] * 1000, shifted, then float32.
  FlowMatchEulerScheduler s = make(config_from(R"({"num_train_timesteps": 1000, "shift": 3.0})"));
  EXPECT_EQ(s.sigma_max(), 1.0);
  ASSERT_TRUE(s.set_timesteps(28, std::nullopt, std::nullopt).ok());
  ASSERT_EQ(s.timesteps().size(), 28u);
  ASSERT_EQ(s.sigmas().size(), 29u);
  EXPECT_EQ(s.sigmas().back(), 0.0f);
  for (size_t i = 0; i < 28; ++i) {
    const double lo = s.sigma_min(), t = 1.0 + (lo - 1.0) * double(i) / 27.0;
    const double expect = 3.0 * t / (1.0 + 2.0 * t);
    EXPECT_NEAR(s.sigmas()[i], expect, 1e-6 * expect) << i;
    EXPECT_EQ(s.timesteps()[i], s.sigmas()[i] * 1000.0f);
  }
  EXPECT_EQ(s.timesteps()[0], 1000.0f);
}

TEST(FlowMatch, SetTimestepsVariantsAndErrors) {
  const std::string flux = R"({"use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15})";
  FlowMatchEulerScheduler s = make(config_from(flux));
  EXPECT_FALSE(s.set_timesteps(4, flux_pipeline_sigmas(4), std::nullopt).ok());  // mu is required
  EXPECT_FALSE(s.set_timesteps(5, flux_pipeline_sigmas(4), 1.0).ok());           // length mismatch
  EXPECT_FALSE(s.set_timesteps(std::nullopt, std::nullopt, 1.0).ok());           // nothing to size it
  EXPECT_FALSE(s.set_timesteps(0, std::nullopt, 1.0).ok());
  auto n = retrieve_timesteps(s, 4, std::nullopt, flux_pipeline_sigmas(4), 1.15);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n.value(), 4);
  // Exponential time shift with mu: e^mu / (e^mu + 1/t - 1); t = 1 stays 1.
  EXPECT_EQ(s.sigmas()[0], 1.0f);
  const double t = float(0.5), e = std::exp(1.15);
  EXPECT_NEAR(s.sigmas()[2], e / (e + 1.0 / t - 1.0), 1e-6);
  EXPECT_FALSE(retrieve_timesteps(s, 4, std::vector<double>{1000.0}, std::vector<double>{1.0}, 1.0).ok());

  // Linear time shift: mu / (mu + 1/t - 1).
  FlowMatchEulerScheduler lin = make(config_from(R"({"use_dynamic_shifting": true, "time_shift_type": "linear"})"));
  ASSERT_TRUE(lin.set_timesteps(std::nullopt, std::vector<double>{1.0, 0.5}, 2.0).ok());
  EXPECT_NEAR(lin.sigmas()[1], 2.0 / 3.0, 1e-7);

  // Custom timesteps: sigmas = timesteps / 1000 in float32.
  FlowMatchEulerScheduler ts = make(config_from(R"({"shift": 1.0})"));
  ASSERT_TRUE(ts.set_timesteps(std::nullopt, std::nullopt, std::nullopt, std::vector<double>{900.0, 400.0}).ok());
  EXPECT_EQ(ts.sigmas()[1], 400.0f / 1000.0f);

  // invert_sigmas (Mochi): sigmas = 1 - sigmas, timesteps from the inverted sigmas, terminal 1.
  FlowMatchEulerScheduler inv = make(config_from(R"({"invert_sigmas": true})"));
  ASSERT_TRUE(inv.set_timesteps(std::nullopt, std::vector<double>{1.0, 0.75, 0.25}, std::nullopt).ok());
  EXPECT_EQ(inv.sigmas(), (std::vector<float>{0.0f, 0.25f, 0.75f, 1.0f}));
  EXPECT_EQ(inv.timesteps(), (std::vector<float>{0.0f, 250.0f, 750.0f}));

  // shift_terminal stretches the schedule to end at the given value.
  FlowMatchEulerScheduler term = make(config_from(R"({"shift": 1.0, "shift_terminal": 0.02})"));
  ASSERT_TRUE(term.set_timesteps(10, std::nullopt, std::nullopt).ok());
  EXPECT_NEAR(term.sigmas()[9], 0.02, 1e-7);
  EXPECT_EQ(term.sigmas()[0], 1.0f);
  // One step ends at sigma 1, which the stretch cannot move (diffusers computes 0 / 0): an error, not NaN.
  const Status one = term.set_timesteps(1, std::nullopt, std::nullopt);
  ASSERT_FALSE(one.ok());
  EXPECT_NE(one.error().message.find("at least 2 steps"), std::string::npos) << one.error().message;
}

TEST(FlowMatch, KarrasAndExponentialSigmasKeepTheEndpoints) {
  for (const char* opt : {"use_karras_sigmas", "use_exponential_sigmas"}) {
    FlowMatchEulerScheduler s = make(config_from(std::string(R"({"shift": 3.0, ")") + opt + R"(": true})"));
    ASSERT_TRUE(s.set_timesteps(10, std::nullopt, std::nullopt).ok());
    const std::vector<float>& sg = s.sigmas();
    EXPECT_NEAR(sg[0], 1.0, 1e-6) << opt;
    for (size_t i = 0; i + 2 < sg.size(); ++i) EXPECT_GT(sg[i], sg[i + 1]) << opt;
    EXPECT_EQ(sg.back(), 0.0f);
  }
}

TEST(FlowMatch, ConfigErrorsAreClear) {
  auto beta = FlowMatchConfig::from_json(Json::parse(R"({"use_beta_sigmas": true})"), "cfg.json");
  ASSERT_FALSE(beta.ok());
  EXPECT_NE(beta.error().message.find("use_beta_sigmas"), std::string::npos);
  EXPECT_NE(beta.error().message.find("cfg.json"), std::string::npos);
  EXPECT_FALSE(FlowMatchConfig::from_json(Json::parse(R"({"time_shift_type": "cubic"})"), "c").ok());
  EXPECT_FALSE(
      FlowMatchConfig::from_json(Json::parse(R"({"use_karras_sigmas": true, "use_exponential_sigmas": true})"), "c")
          .ok());
  EXPECT_FALSE(FlowMatchConfig::from_json(Json::parse(R"({"shift": "3"})"), "c").ok());
  EXPECT_FALSE(FlowMatchConfig::from_json(Json::parse(R"({"num_train_timesteps": 0})"), "c").ok());
  // Nulls keep the defaults (diffusers writes shift_terminal: null).
  FlowMatchConfig c = config_from(R"({"shift_terminal": null, "base_shift": null, "shift": 3})");
  EXPECT_FALSE(c.shift_terminal.has_value());
  EXPECT_EQ(c.base_shift, 0.5);
  EXPECT_EQ(c.shift, 3.0);
}

TEST(FlowMatch, StochasticSamplingDrawsTorchNoise) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 1.0, "stochastic_sampling": true})"));
  ASSERT_TRUE(s.set_timesteps(4, std::nullopt, std::nullopt).ok());
  Tensor x = test::random_tensor({20}, 1), m = test::random_tensor({20}, 2);
  EXPECT_FALSE(s.step(m, s.timesteps()[0], x).ok());  // needs a generator
  TorchGenerator g(17);
  auto r = s.step(m, s.timesteps()[0], x, &g);
  ASSERT_TRUE(r.ok()) << r.error().message;
  Tensor noise = torch_randn({20}, 17);
  const float sig = s.sigmas()[0], nxt = s.sigmas()[1];
  for (int k = 0; k < 20; ++k) {
    const float x0 = sub32(x.f32()[k], mul32(sig, m.f32()[k]));
    EXPECT_EQ(r->f32()[k], add32(mul32(sub32(1.0f, nxt), x0), mul32(nxt, noise.f32()[k]))) << k;
  }
}

TEST(FlowMatch, ScaleNoiseInterpolates) {
  FlowMatchEulerScheduler s = make(config_from(R"({"shift": 1.0})"));
  ASSERT_TRUE(s.set_timesteps(std::nullopt, std::vector<double>{1.0, 0.75}, std::nullopt).ok());
  Tensor x = test::random_tensor({6}, 1), n = test::random_tensor({6}, 2);
  auto r = s.scale_noise(x, 750.0f, n);
  ASSERT_TRUE(r.ok());
  for (int k = 0; k < 6; ++k) EXPECT_EQ(r->f32()[k], add32(mul32(0.75f, n.f32()[k]), mul32(0.25f, x.f32()[k])));
}

TEST(FlowMatch, HelpersMatchTheRecordedPipelineArguments) {
  // calculate_shift gives exactly the mu the FLUX and Qwen-Image cases recorded.
  const Json dev = case_meta("sched_flowmatch_flux1_dev")["non_tensor_args"];
  EXPECT_EQ(calculate_shift(4096, 256, 4096, 0.5, 1.15), dev["setup"]["default_1024x1024_28"]["mu"].get<double>());
  EXPECT_EQ(calculate_shift(1536, 256, 4096, 0.5, 1.15), dev["setup"]["512x768_50"]["mu"].get<double>());
  const Json qwen = case_meta("sched_flowmatch_qwenimage")["non_tensor_args"];
  EXPECT_EQ(calculate_shift(4096, 256, 8192, 0.5, 0.9), qwen["setup"]["default_1024x1024_50"]["mu"].get<double>());
  EXPECT_EQ(calculate_shift(6032, 256, 8192, 0.5, 0.9), qwen["setup"]["928x1664_30"]["mu"].get<double>());
  // Mochi's linear-quadratic schedule, bit for bit.
  const Json mochi = case_meta("sched_flowmatch_mochi")["non_tensor_args"]["setup"];
  for (const char* run : {"default_64", "50"}) {
    const Json& setup = mochi[run];
    const std::vector<double> expect = setup["linear_quadratic_sigmas"].get<std::vector<double>>();
    const std::vector<double> got = linear_quadratic_schedule(setup["num_inference_steps"].get<int64_t>(), 0.025);
    EXPECT_EQ(got, expect) << run;
  }
}

TEST(FlowMatch, LinspaceFollowsNumpy) {
  EXPECT_EQ(np_linspace(0.0, 1.0, 5), (std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0}));
  EXPECT_EQ(np_linspace(3.0, 7.0, 1), (std::vector<double>{3.0}));
  EXPECT_TRUE(np_linspace(0.0, 1.0, 0).empty());
  const std::vector<double> f = flux_pipeline_sigmas(28);
  ASSERT_EQ(f.size(), 28u);
  EXPECT_EQ(f.front(), 1.0);
  EXPECT_EQ(f.back(), 1.0 / 28.0);
  const double step = (1.0 / 28.0 - 1.0) / 27.0;
  volatile double p = 5.0 * step;  // volatile: no fused multiply-add
  EXPECT_EQ(f[5], p + 1.0);
}

}  // namespace
