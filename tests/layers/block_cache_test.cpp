// Step caching on a toy DiT whose blocks add known residuals, so every decision and every cached residual can
// be predicted: the option parser, exactness at threshold 0, the step limits, TaylorSeer's forecasts (exact
// for residuals linear in the step), block stacks with strided stream views, and, through the shared
// denoising loop, separate caches for the prompt and the negative prompt and the reset at an expert switch.
#include "layers/block_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "../pipelines/echo_scheduler.h"
#include "backend/ops.h"
#include "parallel/comm.h"
#include "pipelines/denoise.h"

using namespace meshdit;

namespace {

CacheOptions opts(const std::string& spec) {
  auto o = parse_cache_options(spec);
  EXPECT_TRUE(o.ok()) << spec << ": " << (o.ok() ? "" : o.error().message);
  return o.ok() ? *o : CacheOptions{};
}

// Block i adds residual(i, step) (a constant tensor) to the one stream x [1, 4, 3].
struct ToyModel {
  std::vector<int64_t> stacks;
  std::function<float(int64_t block, int64_t step)> residual;

  int64_t blocks() const {
    int64_t n = 0;
    for (int64_t s : stacks) n += s;
    return n;
  }
  Tensor forward(int64_t step) const {
    Tensor x = ops::full({1, 4, 3}, 1.0f);
    auto blocks_or = CachedBlocks::begin(current_step_cache(), stacks, nullptr, x);
    EXPECT_TRUE(blocks_or.ok()) << blocks_or.error().message;
    CachedBlocks b = std::move(*blocks_or);
    for (int64_t i = 0; i < this->blocks(); ++i) {
      if (b.run(i)) ops::add_(x, ops::full(x.shape(), residual(i, step)));
      b.after(i, {x}, x);
    }
    return x;
  }
};

// Runs `steps` steps of the toy model with one cache: each step's output value (all elements are equal).
std::vector<float> run(const ToyModel& m, const std::string& spec, int64_t steps, CacheReport* report = nullptr) {
  StepCache cache(opts(spec), "shared", nullptr, report);
  std::vector<float> out;
  for (int64_t s = 0; s < steps; ++s) {
    cache.set_step(s);
    ScopedStepCache scope(&cache);
    out.push_back(m.forward(s).to_vector()[0]);
  }
  return out;
}

std::vector<float> run_uncached(const ToyModel& m, int64_t steps) {
  std::vector<float> out;
  for (int64_t s = 0; s < steps; ++s) out.push_back(m.forward(s).to_vector()[0]);
  return out;
}

std::vector<int64_t> cached_steps(const CacheReport& r) {
  std::vector<int64_t> s;
  for (const auto& c : r.calls)
    if (c.cached) s.push_back(c.step);
  return s;
}

}  // namespace

TEST(CacheOptions, ParsesModesFieldsAndStacks) {
  EXPECT_FALSE(opts("none").enabled());
  const CacheOptions fb = opts("fbcache");
  EXPECT_TRUE(fb.enabled());
  ASSERT_EQ(fb.stacks.size(), 1u);
  EXPECT_EQ(fb.stacks[0].fn, 1);
  EXPECT_EQ(fb.stacks[0].bn, 0);
  EXPECT_EQ(fb.taylor_order, 0);
  const CacheOptions db = opts("dbcache");
  EXPECT_EQ(db.stacks[0].fn, 8);
  EXPECT_FLOAT_EQ(db.threshold, 0.08f);
  EXPECT_EQ(db.warmup, 8);
  const CacheOptions full = opts(
      "dbcache+taylorseer:F4B0/F1B2,threshold=0.12,warmup=3,max_cached=5,"
      "max_consecutive=2,order=2");
  ASSERT_EQ(full.stacks.size(), 2u);
  EXPECT_EQ(full.stacks[1].fn, 1);
  EXPECT_EQ(full.stacks[1].bn, 2);
  EXPECT_FLOAT_EQ(full.threshold, 0.12f);
  EXPECT_EQ(full.warmup, 3);
  EXPECT_EQ(full.max_cached, 5);
  EXPECT_EQ(full.max_consecutive, 2);
  EXPECT_EQ(full.taylor_order, 2);
  // What it prints reads back the same.
  EXPECT_EQ(cache_options_str(opts(cache_options_str(full))), cache_options_str(full));
}

TEST(CacheOptions, RefusesWhatItCannotRead) {
  for (const char* bad :
       {"teacache", "none:F1B0", "dbcache:F0B0", "dbcache:F8", "dbcache:threshold=-1", "dbcache:threshold=x",
        "dbcache:warmup=-2", "dbcache:order=1", "dbcache+taylorseer:order=3", "dbcache:speed=fast"}) {
    auto o = parse_cache_options(bad);
    ASSERT_FALSE(o.ok()) << bad;
    EXPECT_NE(o.error().message.find("--cache"), std::string::npos) << o.error().message;
  }
}

TEST(StepCache, ThresholdZeroIsExactlyUncached) {
  ToyModel m{{5}, [](int64_t b, int64_t s) { return 0.01f * float(b + 1) * float(s + 1); }};
  CacheReport report;
  EXPECT_EQ(run(m, "dbcache:F1B1,threshold=0,warmup=0", 10, &report), run_uncached(m, 10));
  EXPECT_TRUE(cached_steps(report).empty());
  EXPECT_EQ(report.blocks_run, 50);
  EXPECT_EQ(report.blocks_total, 50);
}

TEST(StepCache, LargeThresholdSkipsAfterWarmupWithinTheLimits) {
  ToyModel m{{4}, [](int64_t b, int64_t s) { return 0.01f * float(b + 1) * float(s + 1); }};
  CacheReport a, b, c;
  run(m, "fbcache:threshold=100,warmup=2", 10, &a);
  EXPECT_EQ(cached_steps(a), (std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(a.blocks_run, 2 * 4 + 8 * 1);  // cached calls run block 0 only
  run(m, "fbcache:threshold=100,warmup=2,max_consecutive=2", 10, &b);
  EXPECT_EQ(cached_steps(b), (std::vector<int64_t>{2, 3, 5, 6, 8, 9}));
  run(m, "fbcache:threshold=100,warmup=2,max_cached=3", 10, &c);
  EXPECT_EQ(cached_steps(c), (std::vector<int64_t>{2, 3, 4}));
}

// The decision: diff = |r_now - r_prev| / |r_prev| of block 0's residual, r_prev from the last computed call.
TEST(StepCache, DecidesOnTheRelativeChangeSinceTheLastComputedStep) {
  // Block 0 adds 1, 1.05, 1.10, ...: against the last computed step the change grows by 0.05 per step.
  ToyModel m{{3}, [](int64_t b, int64_t s) { return b == 0 ? 1.0f + 0.05f * float(s) : 0.5f; }};
  CacheReport r;
  run(m, "fbcache:threshold=0.12,warmup=1", 8, &r);
  // Step 1: 0.05 < 0.12 cached; step 2: 0.10 cached; step 3: 0.15 computed (new reference); 4, 5 cached; 6...
  EXPECT_EQ(cached_steps(r), (std::vector<int64_t>{1, 2, 4, 5, 7}));
  ASSERT_EQ(r.calls.size(), 8u);
  EXPECT_LT(r.calls[0].diff, 0);  // warmup: not measured
  EXPECT_NEAR(r.calls[3].diff, 0.15, 1e-5);
}

TEST(StepCache, ReusedResidualIsTheLastComputedOne) {
  ToyModel m{{3}, [](int64_t b, int64_t s) { return b == 1 ? 0.25f * float(s) : 0.125f; }};
  const auto got = run(m, "fbcache:threshold=100,warmup=2", 4, nullptr);
  // Steps 2 and 3 add block 1's residual of step 1 (0.25) instead of 0.5 and 0.75.
  EXPECT_FLOAT_EQ(got[2], 1.0f + 0.125f + 0.25f + 0.125f);
  EXPECT_FLOAT_EQ(got[3], got[2]);
}

TEST(StepCache, TaylorSeerForecastsFromFiniteDifferences) {
  // First order on a residual linear in the step, second order on a quadratic one.
  ToyModel linear{{3}, [](int64_t b, int64_t s) { return b == 1 ? 0.25f * float(s) : 0.125f; }};
  const auto exact1 = run_uncached(linear, 6);
  const auto t1 = run(linear, "dbcache+taylorseer:F1B1,threshold=100,warmup=2", 6);
  for (int64_t s = 0; s < 6; ++s) EXPECT_NEAR(t1[size_t(s)], exact1[size_t(s)], 1e-5) << "step " << s;
  const auto plain = run(linear, "dbcache:F1B1,threshold=100,warmup=2", 6);
  EXPECT_GT(std::fabs(plain[5] - exact1[5]), 0.5f);

  // TaylorSeer's second order: r_k + m d1 + m^2/2 d2 with backward differences per step (Taylor terms on
  // finite differences, not Newton's formula), so a quadratic a s^2 computed at steps 0-2 forecasts
  // 4a + 3a m + a m^2: 8a at step 3 (exact 9a), 14a at step 4 (exact 16a); first order gives 7a and 10a.
  const float a = 0.0625f;
  ToyModel quadratic{{3}, [&](int64_t b, int64_t s) { return b == 1 ? a * float(s * s) : 0.125f; }};
  const auto t2 = run(quadratic, "dbcache+taylorseer:F1B1,threshold=100,warmup=3,order=2", 5);
  const auto o1 = run(quadratic, "dbcache+taylorseer:F1B1,threshold=100,warmup=3,order=1", 5);
  EXPECT_NEAR(t2[3], 1.25f + 8 * a, 1e-5);
  EXPECT_NEAR(t2[4], 1.25f + 14 * a, 1e-5);
  EXPECT_NEAR(o1[3], 1.25f + 7 * a, 1e-5);
  EXPECT_NEAR(o1[4], 1.25f + 10 * a, 1e-5);
  // With computed steps apart (max_consecutive), the differences are per step: still exact.
  const auto t3 = run(linear, "dbcache+taylorseer:F1B1,threshold=100,warmup=2,max_consecutive=2", 9);
  const auto exact3 = run_uncached(linear, 9);
  for (int64_t s = 0; s < 9; ++s) EXPECT_NEAR(t3[size_t(s)], exact3[size_t(s)], 1e-5) << "step " << s;
}

// Two stacks as Flux has them: separate streams (x, c) in the first, one tensor of [c; x] rows in the second,
// handed to the cache as views (strided with a batch of 2). Each stack's middle is skipped and restored.
TEST(StepCache, BlockStacksWithStreamViews) {
  const int64_t B = 2, L = 2, N = 3, D = 4;
  auto forward = [&](int64_t step) {
    Tensor x = ops::full({B, N, D}, 1.0f), c = ops::full({B, L, D}, 2.0f);
    auto blocks_or = CachedBlocks::begin(current_step_cache(), {3, 3}, nullptr, x);
    EXPECT_TRUE(blocks_or.ok()) << blocks_or.error().message;
    CachedBlocks b = std::move(*blocks_or);
    for (int64_t i = 0; i < 3; ++i) {
      if (b.run(i)) {
        ops::add_(x, ops::full(x.shape(), 0.5f * float(step + i)));
        ops::add_(c, ops::full(c.shape(), 0.25f));
      }
      b.after(i, {x, c}, x);
    }
    Tensor tokens = concat({c, x}, 1);
    for (int64_t i = 3; i < 6; ++i) {
      if (b.run(i)) ops::add_(tokens, ops::full(tokens.shape(), 0.125f * float(step + 1)));
      const Tensor image = tokens.slice(1, L, L + N);
      b.after(i, {image, tokens.slice(1, 0, L)}, image);
    }
    return tokens;
  };
  StepCache cache(opts("fbcache:F1B0/F1B1,threshold=100,warmup=1"), "shared", nullptr, nullptr);
  Tensor t0, t1;
  for (int64_t s = 0; s < 2; ++s) {
    cache.set_step(s);
    ScopedStepCache scope(&cache);
    (s == 0 ? t0 : t1) = forward(s);
  }
  // Step 1 is cached: blocks 1, 2 (stack 0) and 4 (stack 1) add step 0's residuals. By hand, per element:
  //   x: 1 + 0.5*(1+0) [block 0 at step 1] + 0.5*(0+1) + 0.5*(0+2) [blocks 1-2 at step 0]
  //      + 0.125*2 [block 3, step 1] + 0.125*1 [block 4 at step 0] + 0.125*2 [block 5, step 1]
  //   c: 2 + 0.25 * 3 + the same single-stream residuals as x
  const float single = 0.125f * 2 + 0.125f * 1 + 0.125f * 2;
  const std::vector<float> v = t1.to_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < L + N; ++r) {
      const float want = r < L ? 2.0f + 0.75f + single : 1.0f + 0.5f + 0.5f + 1.0f + single;
      EXPECT_FLOAT_EQ(v[size_t(((b * (L + N)) + r) * D)], want) << "batch " << b << " row " << r;
    }
}

TEST(StepCache, BlockCountsThatLeaveNothingToCacheAreErrors) {
  StepCache cache(opts("dbcache:F8B0"), "shared", nullptr, nullptr);
  auto b = CachedBlocks::begin(&cache, {5}, nullptr, ops::full({1, 2, 2}, 0.0f));
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find("5 blocks"), std::string::npos) << b.error().message;
  StepCache two(opts("dbcache:F1B0/F1B0"), "shared", nullptr, nullptr);
  auto c = CachedBlocks::begin(&two, {5}, nullptr, ops::full({1, 2, 2}, 0.0f));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("1 block stack"), std::string::npos) << c.error().message;
  // Without a cache every block runs.
  auto none = CachedBlocks::begin(nullptr, {5}, nullptr, ops::full({1, 2, 2}, 0.0f));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->run(3));
}

// Through the shared loop: with two calls a step, the prompt's and the negative prompt's caches decide apart.
// The prompt's first-block residual is constant (cached after warmup), the negative prompt's doubles every
// step (never cached); one cache for both would compare one branch with the other.
namespace {

using test::EchoScheduler;

Predictor toy_predictor() {
  return [=](const Tensor& x, float t, Branch b, TensorMap*) -> Result<Tensor> {
    const int64_t s = int64_t(std::lround(10 - t));  // timesteps 10, 9, ...: step = 10 - t
    ToyModel m{{3}, [&](int64_t block, int64_t) {
                 if (block == 0) return b == Branch::Uncond ? std::ldexp(1.0f, int(s)) : 1.0f;
                 return 0.5f;
               }};
    Tensor y = m.forward(s);
    return y.reshape(x.shape());
  };
}

}  // namespace

TEST(StepCache, PromptAndNegativePromptHaveTheirOwnCaches) {
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", toy_predictor(), 2.0f}};
  setup.guidance.mode = CfgMode::TwoCalls;
  setup.cache = opts("fbcache:threshold=0.5,warmup=2");
  CacheReport report;
  setup.cache_report = &report;
  EchoScheduler sched({10, 9, 8, 7, 6, 5});
  LocalComm one;
  auto out = denoise(setup, sched, ops::full({1, 4, 3}, 0.0f), one);
  ASSERT_TRUE(out.ok()) << out.error().message;
  ASSERT_EQ(report.calls.size(), 12u);
  std::vector<int64_t> cond, uncond;
  for (const auto& c : report.calls) {
    ASSERT_TRUE(c.cache == "cond" || c.cache == "uncond") << c.cache;
    if (c.cached) (c.cache == "cond" ? cond : uncond).push_back(c.step);
  }
  EXPECT_EQ(cond, (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_TRUE(uncond.empty());
}

TEST(StepCache, ExpertSwitchStartsAfresh) {
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", toy_predictor(), 1.0f}, Expert{"transformer_2", toy_predictor(), 1.0f}};
  setup.boundary = 7.5f;  // steps 0-2 (t = 10, 9, 8) the first expert, 3-5 the second
  setup.cache = opts("fbcache:threshold=0.5,warmup=2");
  CacheReport report;
  setup.cache_report = &report;
  EchoScheduler sched({10, 9, 8, 7, 6, 5});
  LocalComm one;
  ASSERT_TRUE(denoise(setup, sched, ops::full({1, 4, 3}, 0.0f), one).ok());
  // Warmup again after the switch: steps 3 and 4 compute.
  EXPECT_EQ(cached_steps(report), (std::vector<int64_t>{2, 5}));
}
