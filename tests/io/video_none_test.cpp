// io/video_none.cpp, the MP4 writer and reader of a build without FFmpeg (MESHDIT_WITH_FFMPEG=OFF), compiled
// into meshdit_none_tests in every build: each call is an error naming the file, what is missing and the way
// out, and nothing is written.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "io/video.h"

using namespace meshdit;

namespace {

void expect_without_ffmpeg(const std::string& message, const std::string& path) {
  EXPECT_EQ(message.rfind(path + ": this meshdit was built without FFmpeg (libavcodec-dev", 0), 0u) << message;
  EXPECT_NE(message.find("--frames-dir"), std::string::npos) << message;
  EXPECT_NE(message.find("tools/setup-debian.sh"), std::string::npos) << message;
}

TEST(VideoNone, Mp4OutputIsAnErrorThatSaysWhyAndWritesNothing) {
  const std::string path = (std::filesystem::temp_directory_path() / "meshdit_video_none_test.mp4").string();
  std::remove(path.c_str());
  EXPECT_EQ(video_library(), "");
  const Status available = mp4_output_available(path);
  ASSERT_FALSE(available.ok());
  expect_without_ffmpeg(available.error().message, path);
  const Status st = write_mp4(path, Tensor::zeros({2, 16, 16, 3}), 16);
  ASSERT_FALSE(st.ok());
  expect_without_ffmpeg(st.error().message, path);
  EXPECT_NE(st.error().message.find("MP4 output is unavailable"), std::string::npos) << st.error().message;
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(VideoNone, ReadingIsAnErrorThatSaysWhy) {
  auto v = read_video("clip.mp4");
  ASSERT_FALSE(v.ok());
  expect_without_ffmpeg(v.error().message, "clip.mp4");
  EXPECT_NE(v.error().message.find("reading video is unavailable"), std::string::npos) << v.error().message;
}

}  // namespace
