// `meshdit generate` as a user runs it: images on the built-in model, and one clear message with a
// non-zero exit for each kind of bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "io/json_config.h"
#include "io/png.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string cli() { return MESHDIT_CLI; }

TEST(Generate, BatchWritesPngsWithParametersTimingsAndTrace) {
  const test::TempDir dir;
  const fs::path& d = dir.path();
  std::string out;
  const int rc =
      test::run_command(cli() + " generate --no-progress --prompt 'a small purple diamond' --seed 7" +
                            " --width 64 --height 64 --steps 2 --batch 2 -o " + (d / "img.png").string() +
                            " --timings " + (d / "t.json").string() + " --trace " + (d / "trace.json").string(),
                        &out);
  ASSERT_EQ(rc, 0) << out;
  std::vector<std::vector<uint8_t>> pixels;
  for (int i = 0; i < 2; ++i) {
    int w = 0, h = 0;
    PngText text;
    auto px = read_png((d / ("img-" + std::to_string(i) + ".png")).string(), &w, &h, &text);
    ASSERT_TRUE(px.ok()) << px.error().message;
    EXPECT_EQ(w, 64);
    EXPECT_EQ(h, 64);
    std::map<std::string, std::string> kv(text.begin(), text.end());
    EXPECT_EQ(kv["prompt"], "a small purple diamond");
    EXPECT_EQ(kv["seed"], "7");
    EXPECT_EQ(kv["steps"], "2");
    pixels.push_back(*px);
  }
  EXPECT_NE(pixels[0], pixels[1]) << "the two images of a batch share their noise";

  auto t = load_json((d / "t.json").string());
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t.value()["steps_s"].size(), 2u);
  EXPECT_TRUE(t.value()["stages_s"].contains("vae decode"));
  EXPECT_GT(t.value()["peak_rss_mb"].get<double>(), 1.0);
  // Which GEMM kernel produced these timings (issue 8: no silent fallback).
  EXPECT_NE(t.value().value("gemm", "").find("oneDNN"), std::string::npos) << t.value().dump();
  EXPECT_NE(t.value().value("cpu", ""), "");

  auto tr = load_json((d / "trace.json").string());
  ASSERT_TRUE(tr.ok()) << tr.error().message;
  bool kernel = false, block = false, step = false, gemm_label = false;
  for (const auto& e : tr.value()["traceEvents"]) {
    if (e.value("name", "") == "process_labels")
      gemm_label |= e["args"].value("labels", "").find("gemm: oneDNN") != std::string::npos;
    const std::string cat = e.value("cat", "");
    kernel |= cat == "kernel";
    block |= cat == "block";
    step |= cat == "step";
  }
  EXPECT_TRUE(kernel && block && step) << "trace lacks kernel, block or step spans";
  EXPECT_TRUE(gemm_label) << "trace lacks the GEMM kernel in its process labels";
}

TEST(Generate, SameSeedSameImage) {
  const test::TempDir dir;
  const fs::path& d = dir.path();
  std::string out;
  for (const char* name : {"a.png", "b.png"})
    ASSERT_EQ(test::run_command(cli() + " generate --no-progress -p 'a large green square' --seed 3 --width 32" +
                                    " --height 32 --steps 1 -o " + (d / name).string(),
                                &out),
              0)
        << out;
  int w, h;
  auto a = read_png((d / "a.png").string(), &w, &h);
  auto b = read_png((d / "b.png").string(), &w, &h);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

struct BadCase {
  std::string name, args, expect;
};

class GenerateBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(GenerateBadInput, OneClearMessageAndExitOne) {
  const BadCase& c = GetParam();
  std::string args = c.args;
  // Folders are made here, not when the cases are listed: listing runs in every test process.
  const test::TempDir dir;
  if (const auto at = args.find("{unknown_pipeline}"); at != std::string::npos) {
    dir.write("model_index.json", R"({"_class_name": "NoSuchPipeline"})");
    args.replace(at, std::string("{unknown_pipeline}").size(), dir.str());
  }
  std::string out;
  const int rc = test::run_command(cli() + " generate --no-progress " + args, &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find(c.expect), std::string::npos) << out;
  EXPECT_EQ(out.find("internal error"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GenerateBadInput,
    ::testing::Values(BadCase{"MissingModel", "--model /nonexistent/model -p x -o /tmp/x.png", "/nonexistent/model"},
                      BadCase{"UnknownPipeline", "--model {unknown_pipeline} -p x -o /tmp/x.png", "NoSuchPipeline"},
                      BadCase{"WidthNotMultipleOf16", "-p x --width 100 -o /tmp/x.png", "multiples of 16"},
                      BadCase{"UnwritableOutput", "-p x -o /nonexistent/dir/x.png", "not writable"},
                      BadCase{"Mp4FromImagePipeline", "-p x -o /tmp/x.mp4", "FluxPipeline makes images: write a .png"},
                      BadCase{"FramesFromImagePipeline", "-p x --frames 17 -o /tmp/x.png",
                              "FluxPipeline makes images: --frames is for video pipelines"},
                      BadCase{"FramesDirFromImagePipeline", "-p x --frames-dir /tmp/frames -o /tmp/x.png",
                              "FluxPipeline makes images: --frames-dir is for video pipelines"},
                      BadCase{"NegativePromptCount", "-p x -p y --negative-prompt n --true-cfg 2 -o /tmp/x.png",
                              "one negative prompt per prompt"}),
    [](const auto& info) { return info.param.name; });

}  // namespace
