// Step caching through every pipeline on main (the shared float64 pipeline cases and the built-in model):
// threshold 0 gives the uncached images bit for bit, a huge threshold skips every call it may, each of the
// three modes runs, and the loop keeps one cache per branch where guidance is two calls a step and one
// shared cache where it is a batch of two. Nothing here is model-specific: a model that registers gets it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "../test_util.h"
#include "app/runners.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "pipelines/pipeline.h"

using namespace meshdit;

namespace {

struct Case {
  std::string dir;
  GenerateOptions options;
  bool two_calls = false;  // guidance as a call on the prompt and one on the negative prompt
};

// The case's own prompt, negative prompt, size and guidance (its meta.json), with more steps than the
// reference ran so that there is something to skip.
Case pipeline_case(const std::string& name, bool two_calls) {
  Case c;
  c.dir = test::shared_fixtures_dir() + "/" + name;
  c.two_calls = two_calls;
  auto meta = load_json(c.dir + "/meta.json");
  EXPECT_TRUE(meta.ok()) << meta.error().message;
  const Json& a = (*meta)["non_tensor_args"];
  GenerateOptions& o = c.options;
  o.prompt = {a["prompt"][0].get<std::string>()};
  o.negative_prompt = {a["negative_prompt"][0].get<std::string>()};
  o.height = a["height"].get<int64_t>();
  o.width = a["width"].get<int64_t>();
  if (a.contains("num_frames")) o.num_frames = a["num_frames"].get<int64_t>();
  if (a.contains("true_cfg_scale")) o.true_cfg_scale = a["true_cfg_scale"].get<float>();
  if (a.contains("guidance_scale")) o.guidance_scale = a["guidance_scale"].get<float>();
  if (a.contains("guidance_scale_2")) o.guidance_scale_2 = a["guidance_scale_2"].get<float>();
  o.max_sequence_length = a["max_sequence_length"].get<int64_t>();
  o.steps = 6;
  o.seed = 11;
  return c;
}

std::vector<std::string> case_names() {
  std::vector<std::string> out{"builtin"};
  const std::string shared = test::shared_fixtures_dir();
  for (const char* n : {"pipe_flux1_dev", "pipe_sd3", "pipe_qwenimage", "pipe_mochi", "pipe_wan22"})
    if (!shared.empty() && is_directory(shared + "/" + n)) out.push_back(n);
  return out;
}

Case make_case(const std::string& name) {
  if (name == "pipe_flux1_dev") return pipeline_case(name, true);  // true CFG
  if (name == "pipe_qwenimage") return pipeline_case(name, true);
  if (name == "pipe_wan22") return pipeline_case(name, true);
  if (name != "builtin") return pipeline_case(name, false);  // SD3, Mochi: CFG as a batch of two
  Case c;
  c.dir = builtin_model_dir();
  c.options.prompt = {"a large red circle in the center on a blue background"};
  c.options.height = c.options.width = 64;
  c.options.steps = 8;
  c.options.seed = 42;
  return c;
}

class CachedPipeline : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    register_builtin_runners();
    c_ = make_case(GetParam());
    auto entry = pipeline_for_folder(c_.dir);
    ASSERT_TRUE(entry.ok()) << entry.error().message;
    auto pipe = (*entry)->load(c_.dir, Mesh::single(), LoadOptions{});
    ASSERT_TRUE(pipe.ok()) << pipe.error().message;
    pipe_ = std::move(*pipe);
    c_.options = pipe_->with_defaults(c_.options);
    auto st = pipe_->validate(c_.options);
    ASSERT_TRUE(st.ok()) << st.error().message;
  }

  Tensor generate(const std::string& spec, CacheReport* report) {
    GenerateOptions o = c_.options;
    if (!spec.empty()) {
      auto opts = parse_cache_options(spec);
      EXPECT_TRUE(opts.ok()) << opts.error().message;
      o.cache = *opts;
      o.cache_report = report;
    }
    auto images = pipe_->generate(o);
    EXPECT_TRUE(images.ok()) << spec << ": " << images.error().message;
    return images.ok() ? images->contiguous() : Tensor{};
  }

  Case c_;
  std::unique_ptr<Pipeline> pipe_;
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.f32(), b.f32(), size_t(a.numel()) * sizeof(float)) == 0;
}

TEST_P(CachedPipeline, ThresholdZeroIsTheUncachedImageBitForBit) {
  const Tensor uncached = generate("", nullptr);
  CacheReport report;
  const Tensor cached = generate("fbcache:threshold=0,warmup=0", &report);
  EXPECT_TRUE(same_bits(uncached, cached));
  EXPECT_EQ(report.cached_calls(), 0);
  EXPECT_EQ(report.blocks_run, report.blocks_total);
  int64_t measured = 0;
  for (const auto& call : report.calls) measured += call.diff >= 0;
  EXPECT_GT(measured, 0) << "the change is measured even when nothing may skip";
}

TEST_P(CachedPipeline, HugeThresholdSkipsEveryCallAfterTheWarmup) {
  CacheReport report;
  const Tensor images = generate("fbcache:threshold=1e9,warmup=1", &report);
  ASSERT_TRUE(images.defined());
  // Per cache: its first call (and the first after an expert switch) computes, every later one is cached.
  std::map<std::string, int64_t> calls, cached;
  for (const auto& call : report.calls) ++calls[call.cache], cached[call.cache] += call.cached;
  const int64_t steps = c_.options.steps;
  if (c_.two_calls) {
    ASSERT_EQ(calls.size(), 2u) << "one cache for the prompt, one for the negative prompt";
    EXPECT_EQ(calls["cond"], steps);
    EXPECT_EQ(calls["uncond"], steps);
  } else {
    ASSERT_EQ(calls.size(), 1u) << "the guidance batch shares one cache";
    EXPECT_EQ(calls["shared"], steps);
  }
  const int64_t restarts = GetParam() == "pipe_wan22" ? 2 : 1;  // Wan2.2: each expert starts afresh
  for (const auto& [name, n] : calls) EXPECT_EQ(cached[name], n - restarts) << name;
  EXPECT_LT(report.blocks_run, report.blocks_total);
  for (const float* p = images.f32(); p != images.f32() + images.numel(); ++p) ASSERT_TRUE(std::isfinite(*p));
}

TEST_P(CachedPipeline, EachModeRunsAndSkips) {
  const Tensor uncached = generate("", nullptr);
  for (const char* spec :
       {"fbcache:threshold=0.5,warmup=2", "dbcache:F1B0,threshold=0.5,warmup=2,max_consecutive=2",
        "dbcache+taylorseer:F1B0,threshold=0.5,warmup=2", "dbcache+taylorseer:F1B0,threshold=0.5,warmup=3,order=2"}) {
    CacheReport report;
    const Tensor images = generate(spec, &report);
    ASSERT_EQ(images.shape(), uncached.shape()) << spec;
    for (const float* p = images.f32(); p != images.f32() + images.numel(); ++p) ASSERT_TRUE(std::isfinite(*p)) << spec;
    EXPECT_EQ(report.calls.size(), size_t(c_.options.steps * (c_.two_calls ? 2 : 1))) << spec;
    EXPECT_GT(report.blocks_total, 0) << spec;
  }
}

INSTANTIATE_TEST_SUITE_P(Pipelines, CachedPipeline, ::testing::ValuesIn(case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
