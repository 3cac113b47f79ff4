// What generate does with a video pipeline's frames: the checks of -o / --frames / --frames-dir before any
// model loads, write_video_output's files, and run_generate end to end on a stand-in video pipeline (no
// video pipeline is registered yet).
#include "app/video_output.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "../test_util.h"
#include "app/generate.h"
#include "io/png.h"
#include "io/video.h"
#include "pipelines/pipeline.h"

namespace fs = std::filesystem;
using namespace meshdit;

// Built without FFmpeg (io/video_none.cpp) there is no MP4 to check; meshdit_none_tests checks that build's errors.
#define SKIP_WITHOUT_FFMPEG() \
  if (video_library().empty()) GTEST_SKIP() << "built without FFmpeg"
namespace {

// [b, f, h, w, 3]: a ramp that moves with the frame and differs per video.
Tensor clip(int64_t b, int64_t f, int64_t h, int64_t w) {
  std::vector<float> v(size_t(b * f * h * w * 3));
  for (size_t i = 0; i < v.size(); ++i) {
    const size_t px = i / 3, x = px % size_t(w), y = px / size_t(w) % size_t(h), t = px / size_t(w * h);
    v[i] = 0.5f + 0.4f * std::sin(0.2f * float(x + y) + 0.5f * float(t) + float(i % 3));
  }
  return Tensor::from_f32({b, f, h, w, 3}, v);
}

std::string error_of(const Status& st) { return st.ok() ? "(ok)" : st.error().message; }

TEST(VideoOutput, ImagePipelinesRefuseVideoOutputsByName) {
  EXPECT_EQ(error_of(check_generate_output("FluxPipeline", "x.mp4", "", 0)), "FluxPipeline makes images: write a .png");
  EXPECT_EQ(error_of(check_generate_output("FluxPipeline", "dir/X.MP4", "", 0)),
            "FluxPipeline makes images: write a .png");
  EXPECT_NE(error_of(check_generate_output("FluxPipeline", "", "frames", 0)).find("--frames-dir"), std::string::npos);
  EXPECT_NE(error_of(check_generate_output("SD3Pipeline", "x.png", "", 17)).find("--frames is for video"),
            std::string::npos);
  EXPECT_TRUE(check_generate_output("FluxPipeline", "x.png", "", 0).ok());
  EXPECT_TRUE(check_generate_output("FluxPipeline", "", "", 0).ok());
}

TEST(VideoOutput, VideoPipelinesTakeMp4AndFrameCountsTheVaeMakes) {
  ASSERT_NE(video_pipeline_info("WanPipeline"), nullptr);
  EXPECT_EQ(video_pipeline_info("WanPipeline")->fps, 16);
  EXPECT_EQ(video_pipeline_info("MochiPipeline")->fps, 30);
  EXPECT_EQ(video_pipeline_info("FluxPipeline"), nullptr);
  EXPECT_TRUE(check_generate_output("WanPipeline", "a.mp4", "frames", 81).ok());
  EXPECT_TRUE(check_generate_output("WanPipeline", "", "", 1).ok());
  EXPECT_TRUE(check_generate_output("MochiPipeline", "", "", 19).ok());
  EXPECT_EQ(error_of(check_generate_output("WanPipeline", "", "", 20)),
            "--frames 20: WanPipeline makes 1 + 4k frames (its VAE's temporal compression), e.g. 17 or 21");
  EXPECT_NE(error_of(check_generate_output("MochiPipeline", "", "", 20)).find("1 + 6k frames"), std::string::npos);
  EXPECT_NE(
      error_of(check_generate_output("WanPipeline", "a.png", "", 0)).find("WanPipeline makes video: write a .mp4"),
      std::string::npos);
}

TEST(VideoOutput, OneVideoToMp4AndFrames) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const Tensor frames = clip(1, 5, 16, 24).select(0, 0);  // [F, H, W, 3]
  const std::string mp4 = (dir.path() / "v.mp4").string(), pngs = (dir.path() / "frames").string();
  auto written = write_video_output(mp4, frames, 16, pngs);
  ASSERT_TRUE(written.ok()) << written.error().message;
  EXPECT_EQ(*written, (std::vector<std::string>{mp4, pngs}));
  auto v = read_video(mp4);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->count(), 5);
  EXPECT_EQ(v->width, 24);
  EXPECT_NEAR(v->fps, 16, 1e-9);
  int w = 0, h = 0;
  auto last = read_png((fs::path(pngs) / "frame-0004.png").string(), &w, &h);
  ASSERT_TRUE(last.ok()) << last.error().message;
  EXPECT_EQ(*last, to_rgb8(frames.select(0, 4)));
}

TEST(VideoOutput, BatchIsNumberedAsImagesAre) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const Tensor frames = clip(2, 3, 16, 16);
  auto written = write_video_output((dir.path() / "v.mp4").string(), frames, 30, (dir.path() / "f/").string());
  ASSERT_TRUE(written.ok()) << written.error().message;
  ASSERT_EQ(written->size(), 4u);
  for (int b = 0; b < 2; ++b) {
    auto v = read_video((dir.path() / ("v-" + std::to_string(b) + ".mp4")).string());
    ASSERT_TRUE(v.ok()) << v.error().message;
    EXPECT_EQ(v->count(), 3);
    EXPECT_NEAR(v->fps, 30, 1e-9);
    EXPECT_TRUE(fs::exists(dir.path() / ("f-" + std::to_string(b)) / "frame-0002.png"));
  }
}

TEST(VideoOutput, BadOutputsAreErrors) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const Tensor frames = clip(1, 2, 8, 8);
  auto gif = write_video_output((dir.path() / "v.gif").string(), frames, 16);
  ASSERT_FALSE(gif.ok());
  EXPECT_NE(gif.error().message.find(".mp4"), std::string::npos) << gif.error().message;
  auto image = write_video_output((dir.path() / "v.mp4").string(), Tensor::zeros({8, 8, 3}), 16);
  ASSERT_FALSE(image.ok());
  EXPECT_NE(image.error().message.find("[B, F, H, W, 3]"), std::string::npos) << image.error().message;
  auto unwritable = write_video_output("/nonexistent/dir/v.mp4", frames, 16);
  ASSERT_FALSE(unwritable.ok());
  EXPECT_NE(unwritable.error().message.find("/nonexistent/dir/v.mp4"), std::string::npos);
}

// A video pipeline that returns a fixed clip of the requested frame count, as Wan will return its frames.
class StandInVideoPipeline : public Pipeline {
 public:
  std::string name() const override { return "TestVideoPipeline"; }
  GenerateOptions with_defaults(GenerateOptions o) const override {
    if (o.num_frames == 0) o.num_frames = 5;
    if (o.height == 0) o.height = 16;
    if (o.width == 0) o.width = 16;
    if (o.steps == 0) o.steps = 1;
    return o;
  }
  Status validate(const GenerateOptions&) const override { return ok_status(); }
  Result<Tensor> generate(const GenerateOptions& o, TensorMap*, const StepCallback&) const override {
    return clip(int64_t(o.prompt.size()) * o.num_images_per_prompt, o.num_frames, o.height, o.width);
  }
};

void register_stand_in() {
  register_video_pipeline_info({"TestVideoPipeline", 8, 4});
  PipelineEntry e;
  e.class_name = "TestVideoPipeline";
  e.traits = [](const std::string&, const GenerateOptions&, const LoadOptions&) -> Result<ModelTraits> {
    return ModelTraits{};
  };
  e.load = [](const std::string&, const Mesh&, const LoadOptions&) -> Result<std::unique_ptr<Pipeline>> {
    return std::unique_ptr<Pipeline>(new StandInVideoPipeline());
  };
  register_pipeline(e);
}

TEST(VideoOutput, GenerateWritesTheVideoPipelinesFrames) {
  SKIP_WITHOUT_FFMPEG();
  register_stand_in();
  const test::TempDir dir;
  dir.write("model_index.json", R"({"_class_name": "TestVideoPipeline"})");
  GenerateCommand cmd;
  cmd.model = dir.str();
  cmd.prompts = {"a moving ramp"};
  cmd.progress = false;
  cmd.num_frames = 9;
  cmd.output = (dir.path() / "clip.mp4").string();
  cmd.frames_dir = (dir.path() / "frames").string();
  ASSERT_EQ(run_generate(cmd), 0);
  auto v = read_video(cmd.output);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->count(), 9);
  EXPECT_NEAR(v->fps, 8, 1e-9);
  EXPECT_TRUE(fs::exists(dir.path() / "frames" / "frame-0008.png"));

  cmd.num_frames = 8;  // not 1 + 4k: refused before anything loads or is written
  cmd.output = (dir.path() / "bad.mp4").string();
  EXPECT_EQ(run_generate(cmd), 1);
  EXPECT_FALSE(fs::exists(cmd.output));
}

}  // namespace
