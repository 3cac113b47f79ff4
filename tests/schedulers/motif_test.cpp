// Motif-Image's sampler: the schedules' shape and ends, the step-count rules, the negative branch per step and
// the guided Euler step. The values themselves are checked against the reference by the sched_motif case.
#include "schedulers/motif.h"

#include <gtest/gtest.h>

using namespace meshdit;

namespace {

TEST(MotifSampler, OddStepCountIsAnErrorForTheLinearQuadraticSchedule) {
  MotifSamplerConfig c;
  auto odd = MotifSampler::create(c, 49);
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.error().message.find("even step count"), std::string::npos) << odd.error().message;
  EXPECT_NE(odd.error().message.find("49"), std::string::npos) << odd.error().message;
  EXPECT_FALSE(MotifSampler::create(c, 0).ok());
  c.emulating_steps = 10;  // fewer emulated steps than the linear half
  EXPECT_FALSE(MotifSampler::create(c, 50).ok());
  c.schedule = MotifSchedule::Linear;  // any count
  EXPECT_TRUE(MotifSampler::create(c, 49).ok());
}

TEST(MotifSampler, LinearQuadraticScheduleEmulatesALongerOne) {
  auto s = MotifSampler::create(MotifSamplerConfig{}, 50);
  ASSERT_TRUE(s.ok()) << s.error().message;
  const auto& sig = s->sigmas();
  ASSERT_EQ(sig.size(), 51u);
  ASSERT_EQ(s->timesteps().size(), 50u);
  EXPECT_EQ(sig.front(), 1.0f);
  EXPECT_EQ(sig.back(), 0.0f);
  // The first half steps by 1/N (N = 100): t = 1000, 990, ...; then the quadratic half to 0.
  EXPECT_EQ(s->timesteps()[1], 990);
  EXPECT_EQ(s->timesteps()[24], 760);
  for (size_t i = 1; i < sig.size(); ++i) EXPECT_LT(sig[i], sig[i - 1]) << i;
  EXPECT_EQ(s->timestep_input(1, 2).to_vector(), (std::vector<float>{990, 990}));
}

TEST(MotifSampler, NegativeSwitchesFromTheEmptyPromptToZeros) {
  MotifSamplerConfig c;
  c.schedule = MotifSchedule::Linear;
  auto s = MotifSampler::create(c, 20);  // sigma 1, 0.95, 0.9, 0.85, 0.8, ...
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->negative_for(0, false), MotifNegative::EmptyPrompt);
  EXPECT_EQ(s->negative_for(2, false), MotifNegative::EmptyPrompt);
  EXPECT_EQ(s->negative_for(4, false), MotifNegative::Zeros);
  EXPECT_EQ(s->negative_for(19, false), MotifNegative::Zeros);
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(s->negative_for(i, true), MotifNegative::Prompt);
}

TEST(MotifSampler, StepGuidesThenMovesAlongTheVelocity) {
  MotifSamplerConfig c;
  c.schedule = MotifSchedule::Linear;
  c.guidance_scale = 3.0f;
  auto s = MotifSampler::create(c, 4);  // dt = -0.25
  ASSERT_TRUE(s.ok());
  const Tensor x = Tensor::from_f32({1, 2}, {1.0f, 2.0f});
  const Tensor cond = Tensor::from_f32({1, 2}, {2.0f, 0.0f}), uncond = Tensor::from_f32({1, 2}, {1.0f, 1.0f});
  auto y = s->step(0, x, cond, uncond);
  ASSERT_TRUE(y.ok()) << y.error().message;
  // dx = uncond + 3 (cond - uncond) = {4, -2}; x - 0.25 dx = {0, 2.5}.
  EXPECT_EQ(y->to_vector(), (std::vector<float>{0.0f, 2.5f}));
  EXPECT_FALSE(s->step(4, x, cond, uncond).ok());
  EXPECT_FALSE(s->step(0, x, Tensor::from_f32({2}, {1, 2}), uncond).ok());
}

}  // namespace
