// Step caching on a mesh: every rank must skip the same steps, and the images must be those of one device.
// The 1-device reference runs on every rank (Mesh::single, no collectives); the mesh run then splits the
// same generation by CFG, TP and SP. The decision is a ratio of two sums that the ranks all-reduce, so a
// mesh sees the ratio one device sees up to rounding: the thresholds below sit away from every measured
// change (checked), so rounding cannot flip a decision.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "app/runners.h"
#include "core/image_metrics.h"
#include "io/checkpoint.h"
#include "mesh_generate.h"
#include "parallel/mpi_comm.h"
#include "pipelines/pipeline.h"

using namespace meshdit;

namespace {

using test::world_size;

struct CachedRun {
  Tensor images;
  CacheReport report;
};

// One generation of `model` on a mesh built with `parallel`, or on one device when `parallel` is null.
CachedRun generate_cached(const std::string& model, GenerateOptions o, const char* parallel) {
  CachedRun run;
  o.cache_report = &run.report;
  run.images = test::generate_on_mesh(model, o, parallel);
  return run;
}

// The decisions of `got` (a rank's calls: under a split two-call CFG only its own branch's) are those
// `ref` took for the same cache and step.
void expect_same_decisions(const CacheReport& ref, const CacheReport& got, const std::string& what) {
  int64_t matched = 0;
  for (const auto& c : got.calls) {
    bool found = false;
    for (const auto& r : ref.calls) {
      if (r.cache != c.cache || r.step != c.step) continue;
      found = true;
      ++matched;
      EXPECT_EQ(r.cached, c.cached) << what << ": " << c.cache << " step " << c.step << ", diff " << c.diff
                                    << " on the mesh, " << r.diff << " on one device";
      if (r.diff >= 0) {
        EXPECT_NEAR(c.diff, r.diff, 1e-4 * std::max(1.0, r.diff)) << what << " step " << c.step;
      }
    }
    EXPECT_TRUE(found) << what << ": no call of cache " << c.cache << " at step " << c.step << " on one device";
  }
  EXPECT_GT(matched, 0) << what;
}

// The reference must both compute and skip after its warmup, and no measured change may sit so close to the
// threshold that a rounding difference decides it.
void expect_meaningful(const CacheReport& ref, float threshold) {
  EXPECT_GT(ref.cached_calls(), 0) << "the threshold skips nothing: the test would prove nothing";
  int64_t computed_after_warmup = 0;
  for (const auto& c : ref.calls) {
    if (c.diff < 0) continue;
    computed_after_warmup += !c.cached;
    EXPECT_GT(std::abs(c.diff - threshold), 2e-3 * threshold)
        << "step " << c.step << " (" << c.cache << ") measured " << c.diff << ", too close to the threshold";
  }
  EXPECT_GT(computed_after_warmup, 0) << "every measured step skipped: raise the warmup or lower the threshold";
}

void expect_close_images(const Tensor& ref, const Tensor& got, const std::string& what) {
  ASSERT_TRUE(ref.defined() && got.defined()) << what;
  ASSERT_EQ(ref.shape(), got.shape()) << what;
  // The uncached mesh run matches one device to ~1e-5; a cached one adds the same residuals, so only
  // rounding separates them.
  EXPECT_LT(test::rel_l2(got, ref), 1e-3) << what;
  const Tensor a = ref.contiguous(), b = got.contiguous();
  const int64_t W = a.size(2), rows = a.size(0) * a.size(1);  // the batch stacked as one tall image
  EXPECT_GT(psnr(ImageView{a.f32(), W, rows, 3}, ImageView{b.f32(), W, rows, 3}), 60.0) << what;
}

std::vector<std::string> modes_two_calls() {
  if (world_size() == 2) return {"cfg=2", "tp=2", "sp=2", "sp=2,sp_mode=ulysses"};
  if (world_size() == 4) return {"cfg=2,tp=2", "tp=2,sp=2", "cfg=2,sp=2,sp_mode=ulysses", "sp=4"};
  return {};
}

// The built-in model (Flux) with true CFG: the prompt and the negative prompt each keep their own cache, on
// the same rank or (cfg=2) on different ones.
TEST(CacheOnMesh, BuiltinModelTrueCfgSameStepsSameImages) {
  register_builtin_runners();
  GenerateOptions o;
  o.prompt = {"a large red circle in the center on a blue background"};
  o.negative_prompt = {"a green square"};
  o.true_cfg_scale = 2.0f;
  o.height = o.width = 64;
  o.steps = 12;
  o.seed = 42;
  for (const char* spec : {"fbcache:threshold=0.12,warmup=2", "dbcache+taylorseer:F2B0/F0B1,threshold=0.12,warmup=3"}) {
    auto opts = parse_cache_options(spec);
    ASSERT_TRUE(opts.ok()) << opts.error().message;
    o.cache = *opts;
    const CachedRun ref = generate_cached(builtin_model_dir(), o, nullptr);
    expect_meaningful(ref.report, o.cache.threshold);
    // Every mode for the first spec; the second (TaylorSeer's stored derivatives across the mesh) on the first
    // mode and the last, which keeps the suite's time (ASan runs these ranks ~10x slower) in bounds.
    std::vector<std::string> modes = modes_two_calls();
    if (spec[0] != 'f' && modes.size() > 2) modes = {modes.front(), modes.back()};
    for (const auto& mode : modes) {
      const CachedRun got = generate_cached(builtin_model_dir(), o, mode.c_str());
      const std::string what = std::string(spec) + " --parallel " + mode;
      expect_same_decisions(ref.report, got.report, what);
      expect_close_images(ref.images, got.images, what);
    }
  }
}

// SD3.5 runs CFG as one batch [uncond; cond] with one shared cache: split over cfg=2, each rank holds half
// the batch and the decision sums join over the cfg group, so both ranks decide as one device does.
TEST(CacheOnMesh, SD3BatchedCfgSplitDecidesAsOne) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_sd3";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  register_builtin_runners();
  GenerateOptions o;
  o.prompt = {"a photo of a cat"};
  o.negative_prompt = {"blurry"};
  o.height = 80;
  o.width = 112;
  o.steps = 10;
  o.max_sequence_length = 16;
  o.seed = 7;
  auto opts = parse_cache_options("fbcache:threshold=0.5,warmup=2");
  ASSERT_TRUE(opts.ok()) << opts.error().message;
  o.cache = *opts;
  const CachedRun ref = generate_cached(dir, o, nullptr);
  expect_meaningful(ref.report, o.cache.threshold);
  const std::vector<std::string> modes =
      world_size() == 4 ? std::vector<std::string>{"cfg=2,tp=2", "cfg=2,sp=2"} : std::vector<std::string>{"cfg=2"};
  for (const auto& mode : modes) {
    const CachedRun got = generate_cached(dir, o, mode.c_str());
    expect_same_decisions(ref.report, got.report, "pipe_sd3 --parallel " + mode);
    expect_close_images(ref.images, got.images, "pipe_sd3 --parallel " + mode);
  }
}

}  // namespace
