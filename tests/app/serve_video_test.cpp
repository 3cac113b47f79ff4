// `meshdit serve` with a video pipeline (the WanPipeline fixture folder, tiny components): a job's result is
// an MP4 holding the asked frames, with previews from the video latents' first frame. Skipped where the
// shared fixtures are absent.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../test_util.h"
#include "app/serve.h"
#include "io/video.h"

using namespace meshdit;
using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {}  // namespace

TEST(ServeVideo, WanJobReturnsAnMp4) {
  const std::string shared = test::shared_fixtures_dir();
  const std::string model = shared + "/pipe_wan22";
  if (shared.empty() || !fs::exists(model + "/model_index.json")) GTEST_SKIP() << "no shared pipe_wan22 fixture";
  if (video_library().empty()) GTEST_SKIP() << "built without FFmpeg";
  ServeCommand cmd;
  cmd.model = model;
  cmd.port = 0;
  cmd.verbose = false;
  cmd.preview_every = 1;
  auto server = Server::create(cmd);
  ASSERT_TRUE(server.ok()) << server.error().message;
  auto port = (*server)->bind();
  ASSERT_TRUE(port.ok());
  std::thread serving([&] { (*server)->run(); });
  httplib::Client c("127.0.0.1", *port);
  c.set_read_timeout(300, 0);
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(Json::parse(models->body)["data"][0]["pipeline"], "WanPipeline");

  auto bad = c.Post("/v1/jobs", R"({"prompt": "a cat", "size": "64x48", "frames": 8, "steps": 3})", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;  // not 1 + 4k frames

  auto res = c.Post("/v1/images/generations",
                    R"({"prompt": "a cat walking on the grass", "negative_prompt": "blurry, static", "size": "64x48",
                        "frames": 9, "steps": 3, "seed": 1})",
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json j = Json::parse(res->body);
  EXPECT_EQ(j["data"][0]["mime_type"], "video/mp4");
  const auto mp4 = test::unbase64(j["data"][0]["b64_json"].get<std::string>());
  (*server)->stop(true);
  serving.join();

  const test::TempDir dir;
  const std::string path = (dir.path() / "v.mp4").string();
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(mp4.data()), std::streamsize(mp4.size()));
  auto v = read_video(path);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->count(), 9);
  EXPECT_EQ(v->width, 64);
  EXPECT_EQ(v->height, 48);
}
