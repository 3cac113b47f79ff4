// UniPCMultistepScheduler with flow sigmas: the schedule (truncated timesteps, the first sigma 1 - 1e-6, the
// final 0), the solver's order over a run (warm-up, lower_order_final), the final step landing on the data
// prediction, exactness on a straight flow path, and the errors of bad configs and calls.
#include "schedulers/unipc.h"

#include <gtest/gtest.h>

#include <cmath>

#include "backend/model_ops.h"

using namespace meshdit;

namespace {

const char* const kWan22 = R"({
  "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
  "solver_order": 2, "prediction_type": "flow_prediction", "predict_x0": true, "solver_type": "bh2",
  "lower_order_final": true, "disable_corrector": [], "solver_p": null, "use_flow_sigmas": true,
  "flow_shift": 3.0, "final_sigmas_type": "zero", "shift_terminal": null, "trained_betas": null})";

Json wan22() { return Json::parse(kWan22); }

UniPCMultistepScheduler make(const Json& j, int64_t steps) {
  auto c = UniPCConfig::from_json(j, "scheduler_config.json");
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  auto s = UniPCMultistepScheduler::create(c.ok() ? c.value() : UniPCConfig{});
  EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
  EXPECT_TRUE(s->set_timesteps(steps).ok());
  return std::move(s.value());
}

std::string config_error(Json j) {
  auto c = UniPCConfig::from_json(j, "scheduler_config.json");
  return c.ok() ? "" : c.error().message;
}

Tensor filled(const Shape& shape, float start, float stride) {
  std::vector<float> v(size_t(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = start + stride * float(i);
  return Tensor::from_f32(shape, v);
}

TEST(UniPC, FlowScheduleTruncatesTimestepsAndNudgesTheFirstSigma) {
  UniPCMultistepScheduler s = make(wan22(), 50);
  ASSERT_EQ(s.timesteps_i64().size(), 50u);
  ASSERT_EQ(s.sigmas().size(), 51u);
  // shift 3 maps sigma 1 to 1, which becomes 1 - 1e-6: timestep 999 (999.999 truncated), not 1000.
  EXPECT_EQ(s.sigmas()[0], float(1.0 - 1e-6));
  EXPECT_EQ(s.timesteps_i64()[0], 999);
  EXPECT_EQ(s.sigmas().back(), 0.0f);
  for (int64_t i = 0; i < 50; ++i) {
    const double x = 1.0 + double(i) * ((1.0 / 1000 - 1.0) / 50.0);  // linspace(1, 1/N, 51)[i]
    const double shifted = i == 0 ? 1.0 - 1e-6 : 3.0 * x / (1.0 + 2.0 * x);
    EXPECT_EQ(s.timesteps_i64()[size_t(i)], int64_t(shifted * 1000.0)) << i;
    EXPECT_EQ(s.sigmas()[size_t(i)], float(shifted)) << i;
    EXPECT_EQ(s.timesteps()[size_t(i)], float(s.timesteps_i64()[size_t(i)]));
  }
  const Tensor t = s.timesteps_tensor();
  EXPECT_EQ(t.dtype(), DType::I64);
  EXPECT_EQ(t.shape(), Shape{50});
  // A later flow_shift (WanPipeline's argument) takes effect at the next set_timesteps.
  s.set_flow_shift(12.0);
  ASSERT_TRUE(s.set_timesteps(40).ok());
  EXPECT_EQ(s.timesteps_i64().size(), 40u);
  const double x1 = 1.0 + (1.0 / 1000 - 1.0) / 40.0;
  EXPECT_EQ(s.sigmas()[1], float(12.0 * x1 / (1.0 + 11.0 * x1)));
}

TEST(UniPC, FinalSigmaMinKeepsTheLastSigma) {
  Json j = wan22();
  j["final_sigmas_type"] = "sigma_min";
  UniPCMultistepScheduler s = make(j, 10);
  EXPECT_EQ(s.sigmas().back(), s.sigmas()[9]);
  EXPECT_GT(s.sigmas().back(), 0.0f);
}

TEST(UniPC, OrdersWarmUpAndDropAtTheEnd) {
  for (int order : {1, 2, 3}) {
    for (bool lower_final : {true, false}) {
      Json j = wan22();
      j["solver_order"] = order;
      j["lower_order_final"] = lower_final;
      // Without lower_order_final, a final sigma of 0 would enter the higher-order terms' log-SNR ratios; with
      // sigma_min the last step has h = 0, which order 3's solve turns into NaN (in diffusers too).
      if (!lower_final) j["final_sigmas_type"] = "sigma_min";
      const bool finite = lower_final || order < 3;
      const int64_t n = 8;
      UniPCMultistepScheduler s = make(j, n);
      Tensor x = filled({1, 2, 3}, 0.5f, -0.1f);
      std::vector<int64_t> got;
      for (int64_t i = 0; i < n; ++i) {
        auto r = s.step(filled({1, 2, 3}, 0.1f * float(i), 0.03f), s.timesteps()[size_t(i)], x);
        ASSERT_TRUE(r.ok()) << r.error().message;
        x = r.value();
        got.push_back(s.this_order());
        if (finite) {
          for (float v : x.to_vector()) ASSERT_TRUE(std::isfinite(v)) << "order " << order << " step " << i;
        }
      }
      std::vector<int64_t> want;
      for (int64_t i = 0; i < n; ++i) {
        int64_t o = lower_final ? std::min<int64_t>(order, n - i) : order;
        want.push_back(std::min<int64_t>(o, i + 1));
      }
      EXPECT_EQ(got, want) << "solver_order " << order << " lower_order_final " << lower_final;
      EXPECT_EQ(s.step_index(), n);
    }
  }
}

// The last step goes to sigma 0 with order 1: the result is the data prediction of the sample the step was
// given, sample - sigma * v, whatever the corrector did to the sample.
TEST(UniPC, FinalStepIsTheDataPrediction) {
  UniPCMultistepScheduler s = make(wan22(), 5);
  Tensor x = filled({2, 4}, 1.0f, 0.25f);
  for (int64_t i = 0; i < 5; ++i) {
    const Tensor v = filled({2, 4}, -0.3f + 0.05f * float(i), 0.11f);
    auto r = s.step(v, s.timesteps()[size_t(i)], x);
    ASSERT_TRUE(r.ok()) << r.error().message;
    if (i == 4) {
      const Tensor want = ops::axpby(1.0f, x, -s.sigmas()[4], v);
      EXPECT_EQ(r->to_vector(), want.to_vector());
    }
    x = r.value();
  }
}

// On a straight path x_sigma = (1 - sigma) x0 + sigma n with the exact velocity n - x0, every data prediction
// is x0 and UniPC lands on x0 (the B(h) update is exact for a constant data prediction).
TEST(UniPC, StraightFlowPathEndsAtItsData) {
  for (int order : {1, 2, 3}) {
    Json j = wan22();
    j["solver_order"] = order;
    UniPCMultistepScheduler s = make(j, 12);
    const Tensor x0 = filled({3, 5}, -1.0f, 0.13f), noise = filled({3, 5}, 0.7f, -0.09f);
    const Tensor v = ops::axpby(1.0f, noise, -1.0f, x0);
    Tensor x = ops::axpby(1.0f - s.sigmas()[0], x0, s.sigmas()[0], noise);
    for (size_t i = 0; i < 12; ++i) {
      auto r = s.step(v, s.timesteps()[i], x);
      ASSERT_TRUE(r.ok()) << r.error().message;
      x = r.value();
      const Tensor on_path = ops::axpby(1.0f - s.sigmas()[i + 1], x0, s.sigmas()[i + 1], noise);
      const std::vector<float> a = x.to_vector(), b = on_path.to_vector();
      for (size_t k = 0; k < a.size(); ++k) ASSERT_NEAR(a[k], b[k], 2e-5) << "order " << order << " step " << i;
    }
  }
}

// solver_order 3 (the fixture covers 2): after four third-order predictor / corrector steps and the second-order
// one lower_order_final gives the next-to-last step, against a float64 transcription of diffusers' update
// (Python floats, linalg.solve by elimination) on the same inputs.
TEST(UniPC, ThirdOrderMatchesAFloat64Transcription) {
  Json j = wan22();
  j["solver_order"] = 3;
  UniPCMultistepScheduler s = make(j, 8);
  Tensor x = filled({1, 2, 3}, 0.5f, -0.1f);
  const std::vector<std::vector<double>> want = {
      {0.315303454, 0.200333454, 0.0853634537, -0.0296065463, -0.144576546, -0.259546546},
      {0.179681067, 0.0587314263, -0.0622182142, -0.183167855, -0.304117495, -0.425067136}};
  for (int64_t i = 0; i < 7; ++i) {
    auto r = s.step(filled({1, 2, 3}, 0.1f * float(i), 0.03f), s.timesteps()[size_t(i)], x);
    ASSERT_TRUE(r.ok()) << r.error().message;
    x = r.value();
    if (i < 5) continue;
    const std::vector<float> got = x.to_vector();
    for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], want[size_t(i - 5)][k], 2e-6) << "step " << i;
  }
}

TEST(UniPC, StepIndexFromTheTimestep) {
  UniPCMultistepScheduler s = make(wan22(), 10);
  EXPECT_EQ(s.index_for_timestep(s.timesteps()[3]), 3);
  EXPECT_EQ(s.index_for_timestep(12345.0f), 9);  // absent: the last step, as diffusers
  s.set_begin_index(2);
  const Tensor x = filled({4}, 0.0f, 1.0f);
  ASSERT_TRUE(s.step(x, s.timesteps()[2], x).ok());
  EXPECT_EQ(s.step_index(), 3);
}

TEST(UniPC, BadConfigsNameTheirKey) {
  EXPECT_EQ(config_error(wan22()), "");
  auto with = [](const char* key, Json v) {
    Json j = wan22();
    j[key] = std::move(v);
    return config_error(j);
  };
  auto expect_key = [](const std::string& err, const std::string& key) {
    EXPECT_NE(err.find("scheduler_config.json"), std::string::npos) << err;
    EXPECT_NE(err.find("'" + key + "'"), std::string::npos) << err;
  };
  expect_key(with("use_flow_sigmas", false), "use_flow_sigmas");
  expect_key(with("solver_type", "rk4"), "solver_type");
  expect_key(with("prediction_type", "x"), "prediction_type");
  expect_key(with("predict_x0", false), "prediction_type");
  expect_key(with("thresholding", true), "thresholding");
  expect_key(with("solver_p", "dpm"), "solver_p");
  expect_key(with("use_karras_sigmas", true), "use_karras_sigmas");
  expect_key(with("flow_shift", "3"), "flow_shift");
  expect_key(with("flow_shift", 0), "flow_shift");
  expect_key(with("solver_order", 0), "solver_order");
  expect_key(with("final_sigmas_type", "one"), "final_sigmas_type");
  expect_key(with("beta_schedule", "cosine"), "beta_schedule");
  expect_key(with("disable_corrector", "none"), "disable_corrector");
  expect_key(with("time_shift_type", "log"), "time_shift_type");
  Json j = wan22();
  j["use_flow_sigmas"] = false;
  j["shift_terminal"] = 0.1;
  expect_key(config_error(j), "shift_terminal");
  // diffusers' aliases of bh2.
  auto c = UniPCConfig::from_json(
      [] {
        Json k = wan22();
        k["solver_type"] = "midpoint";
        return k;
      }(),
      "scheduler_config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->solver_type, "bh2");
}

TEST(UniPC, BadCallsAreErrors) {
  auto c = UniPCConfig::from_json(wan22(), "scheduler_config.json");
  ASSERT_TRUE(c.ok());
  auto s = UniPCMultistepScheduler::create(c.value());
  ASSERT_TRUE(s.ok());
  const Tensor x = filled({4}, 0.0f, 1.0f);
  auto r = s->step(x, 999.0f, x);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("set_timesteps"), std::string::npos) << r.error().message;
  EXPECT_FALSE(s->set_timesteps(0).ok());
  EXPECT_FALSE(s->set_timesteps(std::nullopt).ok());
  ASSERT_TRUE(s->set_timesteps(4).ok());
  r = s->step(filled({5}, 0.0f, 1.0f), s->timesteps()[0], x);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("differ in shape"), std::string::npos) << r.error().message;
  r = s->step(Tensor::from_i64({4}, {1, 2, 3, 4}), s->timesteps()[0], x);
  EXPECT_FALSE(r.ok());
  // Stepping past the schedule.
  Tensor y = x;
  for (size_t i = 0; i < 4; ++i) {
    auto ok = s->step(x, s->timesteps()[i], y);
    ASSERT_TRUE(ok.ok());
    y = ok.value();
  }
  r = s->step(x, s->timesteps()[3], y);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("past the end"), std::string::npos) << r.error().message;
  // Dynamic shifting needs mu.
  UniPCConfig dyn = c.value();
  dyn.use_dynamic_shifting = true;
  auto d = UniPCMultistepScheduler::create(dyn);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->set_timesteps(10).ok());
  EXPECT_TRUE(d->set_timesteps(10, std::nullopt, 0.5).ok());
  // A config built in code is checked like a file.
  UniPCConfig bad = c.value();
  bad.use_flow_sigmas = false;
  EXPECT_FALSE(UniPCMultistepScheduler::create(bad).ok());
}

}  // namespace
