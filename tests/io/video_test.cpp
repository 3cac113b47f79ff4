// MP4 output through libavcodec / libavformat: a synthetic clip written, decoded back with libavformat and
// compared with the bytes it was made from; and each kind of bad input as an error value naming the file.
#include "io/video.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "io/png.h"

namespace fs = std::filesystem;
using namespace meshdit;

// Built without FFmpeg (io/video_none.cpp) there is no MP4 to check; meshdit_none_tests checks that build's errors.
#define SKIP_WITHOUT_FFMPEG() \
  if (video_library().empty()) GTEST_SKIP() << "built without FFmpeg"
namespace {

// Gradients sliding across the frame and a soft bright disc moving diagonally, smooth in colour as decoded
// latents are: yuv420p keeps one chroma sample per 2x2 pixels, and hard saturated colour edges (a wrapping
// red ramp, a white square) on a 64x48 frame measure ~32 dB from that subsampling alone, even at crf 0.
Tensor synthetic_clip(int64_t n, int64_t h, int64_t w) {
  const float pi = 3.14159265f;
  std::vector<float> v(size_t(n * h * w * 3));
  for (int64_t f = 0; f < n; ++f)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        float* p = &v[size_t(((f * h + y) * w + x) * 3)];
        p[0] = 0.5f + 0.4f * std::sin(2 * pi * float(x + 2 * f) / float(w));
        p[1] = 0.2f + 0.6f * float(y) / float(h - 1);
        p[2] = 0.5f + 0.3f * std::cos(2 * pi * float(x + y + f) / float(w + h));
        const float cx = 10.0f + 2.0f * float(f), cy = 8.0f + 1.5f * float(f);
        const float a = std::exp(-((float(x) - cx) * (float(x) - cx) + (float(y) - cy) * (float(y) - cy)) / 30.0f);
        for (int k = 0; k < 3; ++k) p[k] = (1 - a) * p[k] + a * 0.95f;
      }
  return Tensor::from_f32({n, h, w, 3}, v);
}

double psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) se += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
  const double mse = se / double(a.size());
  return mse == 0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

TEST(Video, Mp4RoundTripsWithinCodecTolerance) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const std::string path = (dir.path() / "clip.mp4").string();
  const Tensor clip = synthetic_clip(17, 48, 64);
  ASSERT_TRUE(write_mp4(path, clip, 16).ok());
  auto v = read_video(path);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->codec, "h264");
  EXPECT_EQ(v->count(), 17);
  EXPECT_EQ(v->width, 64);
  EXPECT_EQ(v->height, 48);
  EXPECT_NEAR(v->fps, 16.0, 1e-9);
  ASSERT_EQ(v->count(), 17);
  double worst = 1e9, sum = 0;
  for (int64_t f = 0; f < 17; ++f) {
    const double p = psnr(to_rgb8(clip.select(0, f)), v->rgb[size_t(f)]);
    worst = std::min(worst, p);
    sum += p;
  }
  std::printf("PSNR over 17 frames: min %.2f dB, mean %.2f dB\n", worst, sum / 17);
  EXPECT_GT(worst, 35.0) << "a frame is further from what was written than H.264 at crf 17 allows";
}

TEST(Video, Mp4KeepsTheFrameRateAndTakesViewsAndHalfFloats) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const std::string path = (dir.path() / "mochi.mp4").string();
  // Mochi's 30 fps, written from a bf16 strided view (every other frame).
  const Tensor clip = synthetic_clip(10, 32, 48);
  const Tensor view = clip.to(DType::BF16).reshape({5, 2, 32, 48, 3}).select(1, 0);
  ASSERT_TRUE(write_mp4(path, view, 30).ok());
  auto v = read_video(path);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->count(), 5);
  EXPECT_NEAR(v->fps, 30.0, 1e-9);
  EXPECT_GT(psnr(to_rgb8(view.select(0, 4)), v->rgb[4]), 35.0);
}

TEST(Video, PngFramesHoldTheQuantisedFrames) {
  const test::TempDir dir;
  const Tensor clip = synthetic_clip(3, 16, 24);
  auto written = write_png_frames((dir.path() / "frames" / "run1").string(), clip);
  ASSERT_TRUE(written.ok()) << written.error().message;
  ASSERT_EQ(written->size(), 3u);
  EXPECT_EQ(fs::path((*written)[2]).filename(), "frame-0002.png");
  for (int64_t f = 0; f < 3; ++f) {
    int w = 0, h = 0;
    auto px = read_png((*written)[size_t(f)], &w, &h);
    ASSERT_TRUE(px.ok()) << px.error().message;
    EXPECT_EQ(w, 24);
    EXPECT_EQ(h, 16);
    EXPECT_EQ(*px, to_rgb8(clip.select(0, f)));
  }
}

struct VideoBadCase {
  std::string name;
  Shape shape;
  std::string where;  // "" = a fresh path in the temp folder
  double fps;
  std::string expect;
};

void PrintTo(const VideoBadCase& c, std::ostream* os) { *os << c.name; }

class VideoBadInput : public ::testing::TestWithParam<VideoBadCase> {};

TEST_P(VideoBadInput, ErrorNamesTheFileAndLeavesNoFile) {
  SKIP_WITHOUT_FFMPEG();
  const VideoBadCase& c = GetParam();
  const test::TempDir dir;
  const std::string path = c.where.empty() ? (dir.path() / "bad.mp4").string() : c.where;
  const Tensor frames = Tensor::zeros(c.shape);
  const Status st = write_mp4(path, frames, c.fps);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(path), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find(c.expect), std::string::npos) << st.error().message;
  EXPECT_FALSE(fs::exists(path));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, VideoBadInput,
    ::testing::Values(
        // The message is av_strerror's for ENOENT.
        VideoBadCase{"UnwritablePath", {3, 16, 16, 3}, "/nonexistent/dir/x.mp4", 16, "No such file or directory"},
        VideoBadCase{"NoFrames", {0, 16, 16, 3}, "", 16, "no frames"},
        VideoBadCase{"OddWidth", {3, 16, 15, 3}, "", 16, "even width and height"},
        VideoBadCase{"OddHeight", {3, 17, 16, 3}, "", 16, "even width and height"},
        VideoBadCase{"NotRgb", {3, 16, 16, 4}, "", 16, "[F, H, W, 3]"},
        VideoBadCase{"ImageNotVideo", {16, 16, 3}, "", 16, "[F, H, W, 3]"},
        VideoBadCase{"Batched", {1, 3, 16, 16, 3}, "", 16, "[F, H, W, 3]"},
        VideoBadCase{"ZeroFps", {3, 16, 16, 3}, "", 0, "frame rate"},
        VideoBadCase{"NanFps", {3, 16, 16, 3}, "", std::nan(""), "frame rate"}),
    [](const auto& info) { return info.param.name; });

TEST(Video, IntegerFramesAreRefused) {
  SKIP_WITHOUT_FFMPEG();
  const test::TempDir dir;
  const std::string path = (dir.path() / "ids.mp4").string();
  const Status st = write_mp4(path, Tensor::from_i64({1, 2, 2, 3}, std::vector<int64_t>(12, 0)), 16);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("floating point"), std::string::npos) << st.error().message;
}

TEST(Video, PngFramesIntoAFileIsAnError) {
  const test::TempDir dir;
  dir.write("file.txt", "not a folder");
  const std::string frames_dir = (dir.path() / "file.txt" / "frames").string();
  auto r = write_png_frames(frames_dir, synthetic_clip(2, 8, 8));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(frames_dir), std::string::npos) << r.error().message;
}

TEST(Video, ReadingWhatIsNotAVideoIsAnError) {
  const test::TempDir dir;
  dir.write("notes.mp4", "plain text, not an MP4");
  for (const std::string& path : {(dir.path() / "notes.mp4").string(), (dir.path() / "missing.mp4").string()}) {
    auto v = read_video(path);
    ASSERT_FALSE(v.ok()) << path;
    EXPECT_NE(v.error().message.find(path), std::string::npos) << v.error().message;
  }
}

}  // namespace
