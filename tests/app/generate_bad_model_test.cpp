// `meshdit generate --model DIR` on broken model folders and awkward prompts, for each registered pipeline:
// a copy of a working folder (the built-in FluxPipeline, the shared StableDiffusion3Pipeline and
// QwenImagePipeline fixtures) with one
// thing broken must fail with one message naming what is wrong and exit 1; an over-long prompt must still
// run, with a warning that says how many tokens were dropped.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "io/json_config.h"
#include "io/video.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string cli() { return MESHDIT_CLI; }

struct Model {
  std::string name;  // test name
  std::string source() const {
    // FluxPipeline from the built-in model, so it runs even where the shared fixtures are absent.
    if (name == "Flux") return test::repo_dir() + "/models/tiny-shapes";
    const std::string shared = test::shared_fixtures_dir();
    if (shared.empty()) return std::string();
    if (name == "Wan") return shared + "/pipe_wan22";
    if (name == "Mochi") return shared + "/pipe_mochi";
    return shared + (name == "SD3" ? "/pipe_sd3" : "/pipe_qwenimage");
  }
};

// A working copy of the model folder, for the test to break.
class BrokenModel : public ::testing::TestWithParam<Model> {
 protected:
  void SetUp() override {
    src_ = GetParam().source();
    if (src_.empty() || !fs::exists(src_ + "/model_index.json")) GTEST_SKIP() << "no fixture " << src_;
    // The video models' cases generate into an MP4 (a build without FFmpeg refuses that first).
    const std::string& n = GetParam().name;
    if ((n == "Wan" || n == "Mochi") && !mp4_output_available("x.mp4").ok())
      GTEST_SKIP() << "this build has no MP4 output (MESHDIT_WITH_FFMPEG off)";
    fs::copy(src_, dir_.path() / "model", fs::copy_options::recursive);
  }
  fs::path model() const { return dir_.path() / "model"; }
  // Runs generate on the copy, small and in one step so each case costs little.
  // (Qwen-Image's scheduler stretches its schedule to a terminal sigma, which needs two steps.)
  int generate(const std::string& args, std::string* out) const {
    // (Mochi's linear-quadratic schedule too.)
    const std::string steps = GetParam().name == "Qwen" || GetParam().name == "Mochi" ? "2" : "1";
    // Wan and Mochi make videos: their shortest multi-frame ones into an MP4.
    const std::string& n = GetParam().name;
    const std::string output = n == "Wan"     ? (dir_.path() / "x.mp4").string() + " --frames 5"
                               : n == "Mochi" ? (dir_.path() / "x.mp4").string() + " --frames 7"
                                              : (dir_.path() / "x.png").string();
    return test::run_command(cli() + " generate --no-progress --model " + model().string() +
                                 " --width 32 --height 32 --steps " + steps + " -o " + output + " " + args,
                             out);
  }
  void expect_error(const std::string& args, const std::string& expect) const {
    std::string out;
    const int rc = generate(args, &out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find(expect), std::string::npos) << "expected '" << expect << "' in:\n" << out;
    EXPECT_EQ(out.find("internal error"), std::string::npos) << out;
  }

  std::string src_;
  test::TempDir dir_;
};

TEST_P(BrokenModel, UnsupportedClassListsTheSupportedOnes) {
  auto index = load_json((model() / "model_index.json").string());
  ASSERT_TRUE(index.ok()) << index.error().message;
  Json j = index.value();
  j["_class_name"] = "StableDiffusionXLPipeline";
  std::ofstream((model() / "model_index.json").string()) << j.dump();
  std::string out;
  EXPECT_EQ(generate("-p x", &out), 1) << out;
  for (const char* want : {"model_index.json", "StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline",
                           "QwenImagePipeline", "WanPipeline", "MochiPipeline"})
    EXPECT_NE(out.find(want), std::string::npos) << "expected '" << want << "' in:\n" << out;
}

// Each removed subfolder or tokenizer file: the message names its path, so the user knows what to restore.
TEST_P(BrokenModel, MissingPartIsNamed) {
  const std::string& name = GetParam().name;
  const std::vector<std::string> parts =
      name == "Flux"    ? std::vector<std::string>{"tokenizer_2",
                                                   "text_encoder_2",
                                                   "transformer",
                                                   "vae",
                                                   "tokenizer/vocab.json",
                                                   "tokenizer/merges.txt",
                                                   "tokenizer_2/spiece.model"}
      : name == "Wan"   ? std::vector<std::string>{"transformer_2",          "transformer",
                                                   "text_encoder",           "vae",
                                                   "tokenizer/spiece.model", "scheduler/scheduler_config.json"}
      : name == "Mochi" ? std::vector<std::string>{"transformer", "text_encoder", "vae", "tokenizer/spiece.model",
                                                   "scheduler/scheduler_config.json"}
      : name == "SD3"
          ? std::vector<std::string>{"tokenizer_2",          "text_encoder_3",         "text_encoder_2",
                                     "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_3/spiece.model"}
          : std::vector<std::string>{"tokenizer",
                                     "text_encoder",
                                     "transformer",
                                     "vae",
                                     "tokenizer/vocab.json",
                                     "tokenizer/merges.txt",
                                     "scheduler/scheduler_config.json"};
  for (const std::string& part : parts) {
    SCOPED_TRACE(part);
    const fs::path gone = model() / part;
    const fs::path keep = dir_.path() / "kept";
    fs::rename(gone, keep);
    expect_error("-p x", gone.string());
    fs::rename(keep, gone);
  }
}

// A prompt longer than CLIP's 77 tokens and the text encoder's max_sequence_length is truncated, as diffusers
// does, with a warning per encoder that counts the dropped tokens; the run itself succeeds.
TEST_P(BrokenModel, LongPromptIsTruncatedWithAWarning) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "cat ";
  std::string out;
  ASSERT_EQ(generate("--max-sequence-length 8 -p '" + prompt + "'", &out), 0) << out;
  if (GetParam().name == "Wan" || GetParam().name == "Mochi") {
    const std::string encoder = GetParam().name == "Wan" ? "UMT5" : "T5";
    EXPECT_NE(out.find(encoder + " (text_encoder) max_sequence_length is 8 tokens: "), std::string::npos) << out;
    ASSERT_EQ(generate("--max-sequence-length 8 -p cat", &out), 0) << out;
    EXPECT_EQ(out.find("truncated"), std::string::npos) << out;
    return;
  }
  if (GetParam().name == "Qwen") {
    // (The fixture's tiny vocabulary splits "cat ": the count is the tokenizer's, checked in its own test.)
    EXPECT_NE(out.find("max_sequence_length is 8 tokens: "), std::string::npos) << out;
    EXPECT_NE(out.find("tokens dropped"), std::string::npos) << out;
    ASSERT_EQ(generate("--max-sequence-length 8 -p cat", &out), 0) << out;
    EXPECT_EQ(out.find("truncated"), std::string::npos) << out;
    return;
  }
  // CLIP keeps bos + 75 + eos of the 100 one-token words.
  EXPECT_NE(out.find("CLIP (text_encoder) can only handle sequences up to 77 tokens: 25 tokens dropped"),
            std::string::npos)
      << out;
  if (GetParam().name == "SD3") {
    EXPECT_NE(out.find("CLIP (text_encoder_2) can only handle sequences up to 77 tokens: 25 tokens dropped"),
              std::string::npos)
        << out;
  }
  EXPECT_NE(out.find("max_sequence_length is 8 tokens"), std::string::npos) << out;

  // A prompt that fits says nothing.
  ASSERT_EQ(generate("--max-sequence-length 8 -p cat", &out), 0) << out;
  EXPECT_EQ(out.find("truncated"), std::string::npos) << out;
}

TEST_P(BrokenModel, NegativePromptCountMustMatch) {
  // SD3 guides with --guidance (its default 7 already does); Flux's and Qwen-Image's true CFG with --true-cfg.
  const std::string& n = GetParam().name;
  const std::string guide = n == "SD3" || n == "Wan" || n == "Mochi" ? "--guidance 7" : "--true-cfg 2";
  expect_error("-p x -p y --negative-prompt n " + guide, "one negative prompt per prompt");
}

// A video far beyond memory (4096 x 4096, 801 frames: ~300 GiB of frames alone) is refused before any step,
// with the estimate and what it is made of.
class BrokenVideoModel : public BrokenModel {};
TEST_P(BrokenVideoModel, VideoTooLargeForMemoryIsRefusedUpFront) {
  std::string out;
  const std::string frames = GetParam().name == "Mochi" ? "799" : "801";  // 1 + 6k, 1 + 4k
  const int rc = test::run_command(cli() + " generate --no-progress --model " + model().string() +
                                       " --width 4096 --height 4096 --frames " + frames + " --steps 2 -p x -o " +
                                       (dir_.path() / "x.mp4").string(),
                                   &out);
  EXPECT_EQ(rc, 1) << out;
  const std::string what = "4096x4096, " + frames + "-frame video";
  for (const char* want : {what.c_str(), "needs about", "is available", "transformer activations"})
    EXPECT_NE(out.find(want), std::string::npos) << "expected '" << want << "' in:\n" << out;
  EXPECT_EQ(out.find("step "), std::string::npos) << "no step may run:\n" << out;
}

INSTANTIATE_TEST_SUITE_P(Pipelines, BrokenModel,
                         ::testing::Values(Model{"Flux"}, Model{"SD3"}, Model{"Qwen"}, Model{"Wan"}, Model{"Mochi"}),
                         [](const auto& info) { return info.param.name; });
// A frame count the VAE cannot make (Wan 1 + 4k, Mochi 1 + 6k), and for Mochi a single step (its
// linear-quadratic schedule divides by steps / 2): one message each, before any step.
TEST_P(BrokenVideoModel, FramesAndStepsTheModelCannotTake) {
  const bool mochi = GetParam().name == "Mochi";
  auto run = [&](const std::string& frames, const std::string& steps, const std::string& want) {
    std::string out;
    const int rc = test::run_command(cli() + " generate --no-progress --model " + model().string() +
                                         " --width 32 --height 32 --frames " + frames + " --steps " + steps +
                                         " -p x -o " + (dir_.path() / "x.mp4").string(),
                                     &out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find(want), std::string::npos) << "expected '" << want << "' in:\n" << out;
  };
  run("6", "2", mochi ? "1 + 6k" : "1 + 4k");
  if (mochi) run("7", "1", "MochiPipeline needs at least 2 steps");
}

INSTANTIATE_TEST_SUITE_P(Pipelines, BrokenVideoModel, ::testing::Values(Model{"Wan"}, Model{"Mochi"}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
