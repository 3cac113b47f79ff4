// Every landed transformer and pipeline reference case, run on the mesh in each parallel mode: the outputs
// must match the reference within the case's tolerance, as the single-rank run does. Runs under mpirun
// with 2 ranks (1x2 mesh) and with 4 ranks (2x2 mesh).
#include <gtest/gtest.h>

#include "../test_util.h"
#include "app/check.h"
#include "app/runners.h"
#include "io/checkpoint.h"
#include "models/registry.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;

namespace {

int world_size() { return world_communicator()->size(); }

// The parallel modes a world of this size can run: each names the factors it sets.
std::vector<std::string> modes() {
  if (world_size() == 2) return {"tp=2", "sp=2", "sp=2,sp_mode=ulysses", "cfg=2"};
  if (world_size() == 4) return {"tp=2,sp=2", "sp=4", "cfg=2,sp=2", "cfg=2,sp=2,sp_mode=ulysses", "cfg=2,tp=2"};
  return {};
}

MeshShape mesh_shape() { return world_size() == 4 ? MeshShape{2, 2} : MeshShape{1, world_size()}; }

void expect_pass(const std::string& dir, const std::string& parallel) {
  register_builtin_runners();
  CheckOptions opts;
  opts.mesh = mesh_shape();
  opts.parallel = parallel;
  auto rep = run_check(dir, opts);
  ASSERT_TRUE(rep.ok()) << dir << " --parallel " << parallel << ": " << rep.error().message;
  int compared = 0;
  for (const auto& o : rep->outputs) compared += !o.skipped;
  EXPECT_TRUE(rep->pass()) << "--parallel " << parallel << "\n" << rep->format();
  EXPECT_GT(compared, 0);
}

class TransformerOnMesh : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformerOnMesh, EveryParallelModeMatchesTheReference) {
  const std::string dir = test::fixtures_dir() + "/" + GetParam();
  for (const auto& m : modes()) expect_pass(dir, m);
}

// Every reference case of a registered transformer whose forward has landed: a new model joins by
// registering (models/registry.h).
std::vector<std::string> transformer_cases() {
  std::vector<std::string> out;
  const std::string dir = test::fixtures_dir();
  for (const auto& c : test::case_names(dir)) {
    auto cls = case_class(dir + "/" + c);
    if (!cls.ok()) continue;
    const TransformerArch* a = find_transformer_arch_for_case(*cls);
    if (a && a->load) out.push_back(c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, TransformerOnMesh, ::testing::ValuesIn(transformer_cases()),
                         [](const auto& info) { return info.param; });

// SD3 pads its heads with zero heads up to a multiple of tp (SD3.5-Large's 38 heads at tp=4 or 8): the
// fixture's 2 heads at tp=4 are 2 real and 2 zero heads (ranks 2 and 3 hold only padding), which must change
// nothing.
TEST(TransformerOnMesh, SD3PaddedHeads) {
  if (world_size() != 4) GTEST_SKIP() << "tp=4 over 2 heads runs with 4 ranks";
  expect_pass(test::fixtures_dir() + "/sd35_large_transformer", "tp=4");
}

// Motif's 30 heads pad to 32 on tp=4 or 8 (tt_dit's 2x4 and 4x8 presets use tp=4); the fixture's 2 heads at
// tp=4 are 2 real and 2 zero heads, with the text queries' per-head scale on each rank's heads.
TEST(TransformerOnMesh, MotifPaddedHeads) {
  if (world_size() != 4) GTEST_SKIP() << "tp=4 over 2 heads runs with 4 ranks";
  expect_pass(test::fixtures_dir() + "/motif_transformer", "tp=4");
}

// The built-in model end to end (T5, CLIP, 20 steps, VAE) on TP x SP with a parallel VAE decode.
TEST(PipelineOnMesh, BuiltinModelTpTimesSp) {
  if (world_size() != 4) GTEST_SKIP() << "the 2x2 mesh case runs with 4 ranks";
  expect_pass(test::fixtures_dir() + "/tiny_shapes_pipeline", "tp=2,sp=2");
}

// The float64 FLUX.1-dev pipeline case (true CFG): CFG parallel and TP x SP.
TEST(PipelineOnMesh, FluxDevReference) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_flux1_dev";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  expect_pass(dir, world_size() == 4 ? "cfg=2,tp=2" : "cfg=2");
  if (world_size() == 4) expect_pass(dir, "tp=2,sp=2,sp_mode=ring");
}

// A shared float64 pipeline case on the mesh of this run: on 2 ranks the guidance branches over ranks (cfg=2),
// TP and Ulysses SP; on 4 ranks CFG x TP and TP x ring SP. The VAE decode splits over every rank in each.
void expect_pipeline_on_mesh(const std::string& dir) {
  if (world_size() == 4) {
    expect_pass(dir, "cfg=2,tp=2");
    expect_pass(dir, "tp=2,sp=2,sp_mode=ring");
  } else {
    expect_pass(dir, "cfg=2");
    expect_pass(dir, "tp=2");
    expect_pass(dir, "sp=2,sp_mode=ulysses");
  }
}

// The float64 SD3.5 pipeline case (CFG as a batch of two): the guidance halves over ranks, TP (transformer
// and T5) and SP.
TEST(PipelineOnMesh, SD3Reference) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_sd3";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  expect_pipeline_on_mesh(dir);
}

// The float64 Qwen-Image pipeline case (true CFG with the norm rescale, masked text): the two branches over
// ranks, TP (transformer and Qwen2.5-VL), SP with masked text keys, and the VAE decode split by bands.
TEST(PipelineOnMesh, QwenImageReference) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_qwenimage";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  expect_pipeline_on_mesh(dir);
}

// The float64 Wan2.2 pipeline case (two experts, guidance as two calls, UniPC, a 9-frame video): the branches
// over ranks, TP (both experts and UMT5), SP over the video tokens, and the VAE decode split by bands.
TEST(PipelineOnMesh, Wan22Reference) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_wan22";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  expect_pipeline_on_mesh(dir);
}

// The float64 Mochi pipeline case (masked T5 text, CFG as a batch of two, a 13-frame video): the guidance
// halves over ranks, TP (transformer and T5), SP over the video tokens with every rank's text masks, and the
// Mochi VAE decode split by bands.
TEST(PipelineOnMesh, MochiReference) {
  const std::string dir = test::shared_fixtures_dir() + "/pipe_mochi";
  if (test::shared_fixtures_dir().empty() || !is_directory(dir)) GTEST_SKIP() << "needs ../shared/fixtures";
  expect_pipeline_on_mesh(dir);
}

// A text encoder with `heads` attention heads split over every rank by TP (unevenly where they do not
// divide); a world larger than its heads is one clear error.
void expect_encoder_tp(const std::string& dir, int heads) {
  if (world_size() <= heads) {
    expect_pass(dir, "");  // the automatic config: tp over every rank
    return;
  }
  register_builtin_runners();
  CheckOptions opts;
  opts.mesh = mesh_shape();
  auto rep = run_check(dir, opts);
  ASSERT_FALSE(rep.ok());
  const std::string want = std::to_string(heads) + " attention heads cannot cover tp=" + std::to_string(world_size());
  EXPECT_NE(rep.error().message.find(want), std::string::npos) << rep.error().message;
}

// T5 (3 heads in the fixture) with its heads and feed-forward split over the ranks, unevenly on 2.
TEST(TextEncoderOnMesh, T5TensorParallel) { expect_encoder_tp(test::fixtures_dir() + "/text_t5", 3); }

// UMT5 (Wan's text encoder, 3 heads in the fixture, a position-bias table per layer): each rank holds its
// heads' columns of every layer's table, with the same split as T5.
TEST(TextEncoderOnMesh, UMT5TensorParallel) { expect_encoder_tp(test::fixtures_dir() + "/text_umt5", 3); }

// Qwen2.5-VL's text model (2 query heads sharing 1 KV head in the fixture): each rank holds one query head
// and a copy of the KV head it reads.
TEST(TextEncoderOnMesh, Qwen25VLTensorParallel) { expect_encoder_tp(test::fixtures_dir() + "/text_qwen25vl", 2); }

TEST(MeshErrors, HeadsNotDivisibleAndWrongRankCount) {
  register_builtin_runners();
  CheckOptions opts;
  opts.mesh = mesh_shape();
  opts.parallel = "tp=" + std::to_string(world_size());  // the fixtures have 2 heads
  auto rep = run_check(test::fixtures_dir() + "/flux1_dev_transformer", opts);
  if (world_size() > 2) {
    ASSERT_FALSE(rep.ok());
    EXPECT_NE(rep.error().message.find("not divisible by tp=4"), std::string::npos) << rep.error().message;
  }
  opts.parallel = "tp=1,sp=1";
  rep = run_check(test::fixtures_dir() + "/flux1_dev_transformer", opts);
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.error().message.find("must equal the mesh's"), std::string::npos) << rep.error().message;
}

}  // namespace
