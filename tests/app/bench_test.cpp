// `meshdit bench random-checkpoint`: the tensors of every preset with a single-file layout come from the registry
// (its weight spec through the layout's inverted key map), so a file of them must load back as that preset:
// detected in its layout, by the same model, with the same config. The files are written as headers over a hole
// (real width is gigabytes even with few blocks); the values' generator is not under test here.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "../stand_in_device.h"
#include "../test_util.h"
#include "app/bench_cmd.h"
#include "backend/backend.h"
#include "models/registry.h"

using namespace meshdit;

namespace {

struct Preset {
  const TransformerArch* arch;
  std::string name;
};

std::vector<Preset> presets_with_layouts() {
  std::vector<Preset> v;
  for (const auto& a : transformer_archs())
    if (!a.layouts.empty() || (a.infer_config && a.with_blocks))
      for (const auto& p : a.presets) v.push_back({&a, p.name});
  return v;
}

// What a config amounts to, compared through the registry since configs are each model's own type: its
// description and every weight it loads.
void expect_same_config(const TransformerArch& arch, const std::any& got, const std::any& want) {
  EXPECT_EQ(arch.describe(got), arch.describe(want));
  auto a = weight_spec(arch, got, 1, 0), b = weight_spec(arch, want, 1, 0);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].name, (*b)[i].name);
    EXPECT_EQ((*a)[i].shape, (*b)[i].shape) << (*a)[i].name;
  }
}

TEST(Bench, RandomCheckpointOfEveryPresetLoadsAsThatPreset) {
  // The CPU peer's benchmarks read the first three; Qwen-Image's file has diffusers' names, Wan's Wan-AI's.
  std::set<std::string> names;
  for (const auto& p : presets_with_layouts()) names.insert(p.name);
  for (const char* n : {"flux-dev", "flux-schnell", "sd35-large", "qwen-image", "wan22-t2v-a14b"})
    EXPECT_TRUE(names.count(n)) << n;

  test::TempDir tmp;
  for (const auto& p : presets_with_layouts()) {
    auto more = random_checkpoint_spec(p.name, 2, 3), fewer = random_checkpoint_spec(p.name, 1, 1);
    ASSERT_TRUE(more.ok() && fewer.ok()) << p.name;
    EXPECT_GT(more->tensors.size(), fewer->tensors.size()) << p.name << ": the block counts were not applied";
    for (auto [blocks, singles] : {std::pair<int64_t, int64_t>{2, 3}, {1, 1}}) {
      SCOPED_TRACE(p.name + " " + std::to_string(blocks) + "/" + std::to_string(singles));
      auto spec = random_checkpoint_spec(p.name, blocks, singles);
      ASSERT_TRUE(spec.ok()) << spec.error().message;
      EXPECT_EQ(spec->arch, p.arch);
      const std::string file = test::write_header_only(tmp.path() / (p.name + ".safetensors"), spec->tensors);
      auto opened = open_transformer(file);
      ASSERT_TRUE(opened.ok()) << opened.error().message;
      EXPECT_EQ(opened->arch, p.arch);
      EXPECT_EQ(opened->layout, spec->layout_name());
      expect_same_config(*p.arch, opened->config, spec->config);
    }
  }
}

TEST(Bench, RandomCheckpointFromAConfigTakesItsWidthsAndDepth) {
  // The wan22_t2v_transformer fixture's config (2 layers, text width 40): a checkpoint of exactly that shape,
  // whatever the block counts say.
  const std::string cfg = test::fixtures_dir() + "/wan22_t2v_transformer/config.json";
  auto spec = random_checkpoint_spec("wan22-t2v-a14b", 7, 0, cfg);
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  bool text_40 = false;
  for (const auto& [name, shape] : spec->tensors)
    if (name == "condition_embedder.text_embedder.linear_1.weight") text_40 = shape == Shape{32, 40};
  EXPECT_TRUE(text_40) << "the text embedder should take the config's text_dim 40 into its 2 x 16 width, under "
                          "diffusers' name (the file goes into the diffusers folder of that config)";
  EXPECT_EQ(spec->layout_name(), "diffusers");
  std::set<std::string> blocks;
  for (const auto& [name, shape] : spec->tensors)
    if (name.rfind("blocks.", 0) == 0) blocks.insert(name.substr(0, name.find('.', 7)));
  EXPECT_EQ(blocks, (std::set<std::string>{"blocks.0", "blocks.1"})) << "the config's 2 layers, not 7";

  test::TempDir tmp;
  auto missing = random_checkpoint_spec("wan22-t2v-a14b", 1, 0, (tmp.path() / "none.json").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("none.json"), std::string::npos) << missing.error().message;
}

TEST(Bench, TransformerProfileSplitsTheStepByKernelAndWritesATrace) {
  // The flux1_dev_transformer fixture's weights: a real forward, small enough for a test.
  test::TempDir tmp;
  const std::string trace = (tmp.path() / "t.json").string();
  std::string log;
  const int rc = test::run_command(std::string(MESHDIT_CLI) + " bench transformer " + test::fixtures_dir() +
                                       "/flux1_dev_transformer --width 32 --height 32 --text-tokens 8 --steps 2 "
                                       "--threads 1 --profile --trace " +
                                       trace,
                                   &log);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("profile (per step, mean of 1 steps"), std::string::npos) << log;
  EXPECT_NE(log.find("  linear "), std::string::npos) << log;
  EXPECT_NE(log.find("  attention "), std::string::npos) << log;
  EXPECT_NE(log.find("(outside kernels)"), std::string::npos) << log;
  EXPECT_NE(log.find("page faults"), std::string::npos) << log;
  EXPECT_TRUE(std::filesystem::exists(trace));
}

// A video transformer is timed on `--frames` frames: Wan's 5 frames are 2 latent frames (VAE stride 4), so 32x32
// pixels with the fixture's (1, 2, 2) patch are 2 x 2 x 2 = 8 tokens; a frame count the VAE cannot take is refused.
TEST(Bench, VideoTransformerTakesFrames) {
  std::string log;
  const std::string cmd = std::string(MESHDIT_CLI) + " bench transformer " + test::fixtures_dir() +
                          "/wan22_t2v_transformer --width 32 --height 32 --text-tokens 8 --steps 1 --threads 1";
  ASSERT_EQ(test::run_command(cmd + " --frames 5", &log), 0) << log;
  EXPECT_NE(log.find("-> 8 image + 8 text tokens"), std::string::npos) << log;
  EXPECT_NE(test::run_command(cmd + " --frames 4", &log), 0);
  EXPECT_NE(log.find("Wan needs 4k+1 frames"), std::string::npos) << log;
}

// --device cuda on the stand-in device (CPU kernels under the CUDA tag): the weights and inputs go there and every
// step's output comes back through the device's copies; without a device it is one clear error.
TEST(Bench, TransformerRunsOnTheDeviceItIsGiven) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present: device-check.sh times it";
  BenchTransformerCommand cmd;
  cmd.path = test::fixtures_dir() + "/flux1_dev_transformer";
  cmd.width = cmd.height = 32;
  cmd.text_tokens = 8;
  cmd.steps = 2;
  cmd.device = "cuda";
  EXPECT_EQ(run_bench_transformer(cmd), 1);  // no device yet
  {
    test::StandInDevice stand_in;
    const int64_t up = test::g_uploads.load(), down = test::g_downloads.load();
    EXPECT_EQ(run_bench_transformer(cmd), 0);
    EXPECT_GT(test::g_uploads.load(), up) << "weights and inputs were not placed on the device";
    EXPECT_GE(test::g_downloads.load() - down, 2) << "each step's output comes back to the host";
  }
}

// --reference-precision: one more forward of the same inputs in another precision after the timed steps, and the
// relative L2 error against it: 0 exactly against the run's own precision (one thread: the same sums), and some
// percent for fp8 against bf16 (9.6e-2 measured: the fixture's random weights and small widths average little of
// the rounding out, and it compounds over the blocks; the bound only says fp8 ran and stayed sane).
TEST(Bench, TransformerReportsTheErrorAgainstAReferencePrecision) {
  const std::string cmd = std::string(MESHDIT_CLI) + " bench transformer " + test::fixtures_dir() +
                          "/flux1_dev_transformer --width 32 --height 32 --text-tokens 8 --steps 1 --threads 1";
  auto rel_l2 = [](const std::string& log, const std::string& what) {
    const size_t at = log.find("rel_l2 ");
    EXPECT_NE(at, std::string::npos) << log;
    EXPECT_NE(log.find("(" + what + ")"), std::string::npos) << log;
    return at == std::string::npos ? -1.0 : std::stod(log.substr(at + 7));
  };
  std::string log;
  ASSERT_EQ(test::run_command(cmd + " --precision f32 --reference-precision f32", &log), 0) << log;
  EXPECT_EQ(rel_l2(log, "f32 against f32"), 0.0) << log;
  ASSERT_EQ(test::run_command(cmd + " --precision fp8 --reference-precision bf16", &log), 0) << log;
  EXPECT_NE(log.find("precision fp8 (e4m3"), std::string::npos) << log;
  const double e = rel_l2(log, "fp8 against bf16");
  EXPECT_GT(e, 0.0) << log;
  EXPECT_LT(e, 0.25) << log;
  EXPECT_NE(test::run_command(cmd + " --reference-precision fp4", &log), 0);
}

// `bench attention` on the CPU at tiny sizes, in both precisions: it runs and prints its figures; sizes that make
// no call are refused.
TEST(Bench, AttentionPrintsTimeAndThroughput) {
  const std::string cmd = std::string(MESHDIT_CLI) + " bench attention --batch 2 --heads 3 --q-tokens 37 " +
                          "--k-tokens 29 --head-dim 16 --iters 3 --threads 1";
  for (const char* p : {"f32", "bf16"}) {
    SCOPED_TRACE(p);
    std::string log;
    ASSERT_EQ(test::run_command(cmd + " --precision " + p, &log), 0) << log;
    EXPECT_NE(log.find("attention B=2 H=3 Lq=37 Lk=29 D=16"), std::string::npos) << log;
    EXPECT_NE(log.find("ms_per_call "), std::string::npos) << log;
    EXPECT_NE(log.find("TFLOP/s "), std::string::npos) << log;
    EXPECT_EQ(log.find("fraction_of_h200"), std::string::npos) << "the device figure is for CUDA only\n" << log;
  }
  std::string log;
  EXPECT_NE(test::run_command(std::string(MESHDIT_CLI) + " bench attention --head-dim 0", &log), 0) << log;
  BenchAttentionCommand c;
  c.batch = 1, c.heads = 1, c.q_tokens = 4, c.head_dim = 8, c.iters = 1, c.threads = 1;
  EXPECT_EQ(run_bench_attention(c), 0);  // --k-tokens left out: as many keys as queries
  if (find_backend(Device::CUDA) == nullptr) {
    c.device = "cuda";
    EXPECT_EQ(run_bench_attention(c), 1);  // one clear error without a device
  }
}

TEST(Bench, PeakPrintsOneLinePerInstructionKind) {
  std::string log;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " bench peak --threads 1", &log), 0) << log;
  EXPECT_NE(log.find("1 threads at once"), std::string::npos) << log;
  EXPECT_NE(log.find("peak f32 FMA"), std::string::npos) << log;  // every machine of ours has AVX2 + FMA
  EXPECT_NE(log.find(" GFLOP/s"), std::string::npos) << log;
}

TEST(Bench, RandomCheckpointNamesThePresetsItKnows) {
  auto spec = random_checkpoint_spec("flux-pro", 2, 4);
  ASSERT_FALSE(spec.ok());
  for (const auto& p : presets_with_layouts())
    EXPECT_NE(spec.error().message.find(p.name), std::string::npos) << spec.error().message;
  EXPECT_NE(spec.error().message.find("unknown --arch 'flux-pro'"), std::string::npos) << spec.error().message;
  EXPECT_FALSE(random_checkpoint_spec("flux-dev", -1, 4).ok());

  // Qwen-Image has no single-file layout of its own: its file is written with diffusers' names and read back by
  // diffusers_detect and infer_config. Wan's is written in Wan-AI's original names.
  EXPECT_NE(spec.error().message.find("qwen-image (diffusers layout)"), std::string::npos) << spec.error().message;
  EXPECT_NE(spec.error().message.find("wan22-t2v-a14b (wan-original layout)"), std::string::npos)
      << spec.error().message;
}

}  // namespace
