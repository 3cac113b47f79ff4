// `meshdit serve` on a whole mesh: rank 0 serves HTTP and every request runs on every rank (its options
// broadcast, each step's verdict too), so the images are the mesh's generation of them. Two requests in a row
// on a TP/SP mesh, each compared with one device's image of the same seed; then the lead stops and every rank's
// run() returns (a follower left waiting would hang this test).
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "../test_util.h"
#include "app/generation.h"
#include "app/serve.h"
#include "backend/precision.h"
#include "core/image_metrics.h"
#include "io/png.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;
using Json = nlohmann::json;

namespace {

// One device's 8-bit image for the built-in model at 64x64, 4 steps, `seed` (the server's precision).
std::vector<uint8_t> one_device_pixels(uint64_t seed) {
  const ScopedPrecision precision(default_compute_precision());
  GenerateOptions o;
  o.prompt = {"a large red circle in the center on a blue background"};
  o.width = o.height = 64;
  o.steps = 4;
  o.seed = seed;
  auto lp = load_pipeline("", MeshShape{1, 1}, "", with_builtin_defaults(o, true), {});
  if (!lp.ok()) {
    ADD_FAILURE() << lp.error().message;
    return {};
  }
  o = lp->pipeline->with_defaults(with_builtin_defaults(o, true));
  auto images = lp->pipeline->generate(o);
  if (!images.ok()) {
    ADD_FAILURE() << images.error().message;
    return {};
  }
  return to_rgb8(images->select(0, 0));
}

double psnr8(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  const std::vector<float> fa = unit_samples(a), fb = unit_samples(b);
  return psnr(ImageView{fa.data(), 64, 64, 3}, ImageView{fb.data(), 64, 64, 3});
}

TEST(ServeOnMesh, EveryRankRunsEachRequestAndTheLeadStopsThemAll) {
  const int ranks = world_communicator()->size();
  const std::vector<uint8_t> ref7 = one_device_pixels(7), ref8 = one_device_pixels(8);

  ServeCommand cmd;
  cmd.port = 0;
  cmd.verbose = false;
  cmd.parallel = ranks == 4 ? "tp=2,sp=2" : "sp=2";
  auto server = Server::create(cmd);
  ASSERT_TRUE(server.ok()) << server.error().message;
  std::vector<std::vector<uint8_t>> got;
  std::thread client;
  if ((*server)->lead()) {
    auto port = (*server)->bind();
    ASSERT_TRUE(port.ok()) << port.error().message;
    client = std::thread([&, p = *port] {
      httplib::Client c("127.0.0.1", p);
      c.set_read_timeout(300, 0);
      const char* prompt = "a large red circle in the center on a blue background";
      auto a =
          c.Post("/v1/images/generations",
                 Json{{"prompt", prompt}, {"size", "64x64"}, {"steps", 4}, {"seed", 7}}.dump(), "application/json");
      auto b = c.Post("/sdapi/v1/txt2img",
                      Json{{"prompt", prompt}, {"width", 64}, {"height", 64}, {"steps", 4}, {"seed", 8}}.dump(),
                      "application/json");
      if (a && a->status == 200)
        got.push_back(test::png_pixels(test::unbase64(Json::parse(a->body)["data"][0]["b64_json"].get<std::string>())));
      else
        ADD_FAILURE() << "OpenAI request: " << (a ? a->body : httplib::to_string(a.error()));
      if (b && b->status == 200)
        got.push_back(test::png_pixels(test::unbase64(Json::parse(b->body)["images"][0].get<std::string>())));
      else
        ADD_FAILURE() << "A1111 request: " << (b ? b->body : httplib::to_string(b.error()));
      (*server)->stop(false);
    });
  }
  (*server)->run();  // the lead: serves until the client stops it; the others: follow its jobs
  if (client.joinable()) client.join();
  if (!(*server)->lead()) return;
  ASSERT_EQ(got.size(), 2u);
  // The mesh sums in another order than one device: the same picture up to rounding.
  EXPECT_GT(psnr8(got[0], ref7), 40.0) << "--parallel " << cmd.parallel;
  EXPECT_GT(psnr8(got[1], ref8), 40.0) << "--parallel " << cmd.parallel;
  EXPECT_LT(psnr8(got[0], ref8), 30.0) << "each request must get its own seed's image";
}

}  // namespace
