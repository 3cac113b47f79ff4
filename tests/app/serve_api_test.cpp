// `meshdit serve` end to end on loopback: the server started in this process on a free port with the
// built-in model (64x64, 4 steps), driven by cpp-httplib's client. Both image endpoints give the PNG the
// generation API (and `meshdit generate`) gives for the same seed; jobs report progress and previews as
// server-sent events and cancel between steps; bad input is a 4xx JSON error naming the field.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "../test_util.h"
#include "app/generation.h"
#include "app/serve.h"
#include "backend/precision.h"
#include "io/png.h"

using namespace meshdit;
using Json = nlohmann::json;

namespace {

class Running {
 public:
  explicit Running(ServeCommand cmd) {
    cmd.port = 0;
    cmd.verbose = false;
    auto s = Server::create(cmd);
    if (!s.ok()) {
      ADD_FAILURE() << s.error().message;
      return;
    }
    server_ = std::move(*s);
    auto port = server_->bind();
    if (!port.ok()) {
      ADD_FAILURE() << port.error().message;
      return;
    }
    port_ = *port;
    thread_ = std::thread([this] { server_->run(); });
  }
  ~Running() {
    if (server_) server_->stop(true);
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  bool ok() const { return port_ > 0; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    c.set_write_timeout(30, 0);
    return c;
  }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};

class ServeApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServeCommand cmd;
    cmd.max_body_bytes = size_t(2) << 20;
    cmd.limits.memory_bytes = 64.0 * 1073741824.0;
    server_ = new Running(cmd);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static Running* server_;
};
Running* ServeApi::server_ = nullptr;

// What the generation API gives for a request's options (the server's own path, without HTTP).
std::vector<uint8_t> reference_png(GenerateOptions o) {
  // The precision the server (and meshdit generate) runs at.
  const ScopedPrecision precision(default_compute_precision());
  static auto lp = load_pipeline("", MeshShape::parse_or_row("", 1).value(), "", with_builtin_defaults({}, true), {});
  EXPECT_TRUE(lp.ok());
  o = lp->pipeline->with_defaults(with_builtin_defaults(o, true));
  auto images = lp->pipeline->generate(o);
  EXPECT_TRUE(images.ok());
  auto pngs = encode_pngs(*images, o, lp->model);
  EXPECT_TRUE(pngs.ok());
  return pngs->at(0);
}

void expect_error(const httplib::Result& res, int status, const std::string& field) {
  ASSERT_TRUE(res) << "no response: " << httplib::to_string(res.error());
  EXPECT_EQ(res->status, status) << res->body;
  const Json j = Json::parse(res->body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << res->body;
  EXPECT_EQ(j["error"].value("field", ""), field) << res->body;
}

}  // namespace

TEST_F(ServeApi, HealthAndModels) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const Json j = Json::parse(m->body);
  EXPECT_EQ(j["data"][0]["pipeline"], "FluxPipeline");
  EXPECT_EQ(j["data"][0]["defaults"]["width"], 128);
  EXPECT_EQ(j["data"][0]["defaults"]["steps"], 20);
  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_NE(page->body.find("Generate"), std::string::npos);
}

TEST_F(ServeApi, OpenAiImageEqualsMeshditGenerate) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  auto res = c.Post("/v1/images/generations",
                    R"({"prompt": "a large red circle", "size": "64x64", "steps": 4, "seed": 42,
                        "response_format": "b64_json"})",
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json j = Json::parse(res->body);
  ASSERT_EQ(j["data"].size(), 1u);
  const std::vector<uint8_t> png = test::unbase64(j["data"][0]["b64_json"].get<std::string>());

  const test::TempDir dir;
  const std::string out = (dir.path() / "cli.png").string();
  std::string log;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " generate --no-progress -p 'a large red circle' --width 64" +
                                  " --height 64 --steps 4 --seed 42 -o " + out,
                              &log),
            0)
      << log;
  int w = 0, h = 0, cw = 0, ch = 0;
  PngText text;
  const auto served = test::png_pixels(png, &w, &h, &text);
  auto cli = read_png(out, &cw, &ch);
  ASSERT_TRUE(cli.ok());
  EXPECT_EQ(w, 64);
  EXPECT_EQ(h, 64);
  EXPECT_EQ(served, *cli) << "the server's image differs from meshdit generate's";
  std::map<std::string, std::string> kv(text.begin(), text.end());
  EXPECT_EQ(kv["seed"], "42");
  EXPECT_EQ(kv["steps"], "4");
  EXPECT_EQ(kv["prompt"], "a large red circle");
}

TEST_F(ServeApi, A1111ImageEqualsTheGenerationApi) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  auto res = c.Post("/sdapi/v1/txt2img",
                    R"({"prompt": "a small blue square", "negative_prompt": "", "width": 64, "height": 64,
                        "steps": 4, "seed": 7, "batch_size": 1})",
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json j = Json::parse(res->body);
  ASSERT_EQ(j["images"].size(), 1u);
  const Json info = Json::parse(j["info"].get<std::string>());
  EXPECT_EQ(info["seed"], 7);
  EXPECT_EQ(info["steps"], 4);
  GenerateOptions o;
  o.prompt = {"a small blue square"};
  o.width = o.height = 64;
  o.steps = 4;
  o.seed = 7;
  EXPECT_EQ(test::unbase64(j["images"][0].get<std::string>()), reference_png(o));
}

TEST_F(ServeApi, JobWithEventsThenResult) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  // A job ahead of it keeps it queued until its event stream is open: every step of it is then seen.
  auto ahead = c.Post("/v1/jobs", R"({"prompt": "ahead", "size": "64x64", "steps": 8})", "application/json");
  ASSERT_TRUE(ahead);
  ASSERT_EQ(ahead->status, 202) << ahead->body;
  auto sub = c.Post("/v1/jobs", R"({"prompt": "a green triangle", "size": "64x64", "steps": 4, "seed": 3})",
                    "application/json");
  ASSERT_TRUE(sub);
  ASSERT_EQ(sub->status, 202) << sub->body;
  const std::string id = Json::parse(sub->body)["id"];
  std::string stream;
  auto ev = c.Get("/v1/jobs/" + id + "/events", [&](const char* data, size_t n) {
    stream.append(data, n);
    return true;
  });
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_NE(stream.find("event: progress"), std::string::npos) << stream.substr(0, 2000);
  EXPECT_NE(stream.find("\"b64_png\""), std::string::npos) << "no preview in the events";
  EXPECT_NE(stream.find("event: done"), std::string::npos);
  auto got = c.Get("/v1/jobs/" + id);
  ASSERT_TRUE(got);
  const Json j = Json::parse(got->body);
  EXPECT_EQ(j["state"], "done");
  EXPECT_EQ(j["step"], 4);
  ASSERT_EQ(j["images"].size(), 1u);
  GenerateOptions o;
  o.prompt = {"a green triangle"};
  o.width = o.height = 64;
  o.steps = 4;
  o.seed = 3;
  EXPECT_EQ(test::unbase64(j["images"][0]["b64_json"].get<std::string>()), reference_png(o));
  expect_error(c.Get("/v1/jobs/job-unknown"), 404, "id");
}

TEST_F(ServeApi, CancelStopsARunningJobBetweenSteps) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  auto sub = c.Post("/v1/jobs", R"({"prompt": "x", "size": "64x64", "steps": 200, "seed": 1})", "application/json");
  ASSERT_TRUE(sub);
  ASSERT_EQ(sub->status, 202) << sub->body;
  const std::string id = Json::parse(sub->body)["id"];
  for (int i = 0; i < 600; ++i) {
    const Json j = Json::parse(c.Get("/v1/jobs/" + id)->body);
    if (j["state"] == "running" && j["step"].get<int>() >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto del = c.Delete("/v1/jobs/" + id);
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  Json j;
  for (int i = 0; i < 600; ++i) {
    j = Json::parse(c.Get("/v1/jobs/" + id)->body);
    if (j["state"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(j["state"], "cancelled") << j.dump();
  EXPECT_LT(j["step"].get<int>(), 200);
  expect_error(c.Delete("/v1/jobs/" + id), 409, "id");
}

TEST_F(ServeApi, BadInputIsA4xxNamingTheFieldAndTheServerGoesOn) {
  ASSERT_TRUE(server_->ok());
  auto c = server_->client();
  const std::string gen = "/v1/images/generations";
  expect_error(c.Post(gen, R"({"prompt": )", "application/json"), 400, "body");
  expect_error(c.Post(gen, R"({"prompt": "a", "colour": "red"})", "application/json"), 400, "colour");
  expect_error(c.Post(gen, R"({"prompt": "a", "size": "100x100"})", "application/json"), 400, "size");
  expect_error(c.Post(gen, R"({"prompt": "a", "steps": "4"})", "application/json"), 400, "steps");
  expect_error(c.Post(gen, R"({"prompt": "a", "steps": 0})", "application/json"), 400, "steps");
  expect_error(c.Post(gen, R"({"prompt": "a", "size": "65536x65536"})", "application/json"), 400, "size");
  expect_error(c.Post("/sdapi/v1/txt2img", R"({"prompt": "a", "width": 72})", "application/json"), 400, "width");
  expect_error(c.Post("/v1/jobs", R"({"prompt": 1})", "application/json"), 400, "prompt");
  const std::string mb(1 << 20, 'a');
  expect_error(c.Post(gen, R"({"prompt": ")" + mb + R"("})", "application/json"), 400, "prompt");
  const std::string huge(3 << 20, 'a');
  expect_error(c.Post(gen, R"({"prompt": ")" + huge + R"("})", "application/json"), 413, "body");
  expect_error(c.Get("/v1/nothing"), 404, "path");
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST(ServeApiKey, EveryRouteButHealthNeedsTheKey) {
  ServeCommand cmd;
  cmd.api_key = "s3cret";
  Running server(cmd);
  ASSERT_TRUE(server.ok());
  auto c = server.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  expect_error(c.Get("/v1/models"), 401, "Authorization");
  expect_error(c.Post("/v1/jobs", R"({"prompt": "a"})", "application/json"), 401, "Authorization");
  httplib::Headers wrong = {{"Authorization", "Bearer nope"}};
  expect_error(c.Get("/v1/models", wrong), 401, "Authorization");
  httplib::Headers right = {{"Authorization", "Bearer s3cret"}};
  auto m = c.Get("/v1/models", right);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200) << m->body;
}

TEST_F(ServeApi, AClientThatDisconnectsHasItsJobCancelled) {
  ASSERT_TRUE(server_->ok());
  {
    httplib::Client gone("127.0.0.1", server_->port());
    gone.set_read_timeout(1, 0);  // gives up long before 200 steps
    auto res =
        gone.Post("/v1/images/generations", R"({"prompt": "gone", "size": "64x64", "steps": 200})", "application/json");
    EXPECT_FALSE(res) << "the request was meant to time out";
  }
  auto c = server_->client();
  Json job;
  for (int i = 0; i < 500; ++i) {
    const Json list = Json::parse(c.Get("/v1/jobs")->body);
    for (const auto& j : list["data"])
      if (j["request"]["prompt"] == "gone") job = j;
    if (!job.is_null() && job["state"] != "running" && job["state"] != "queued") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(job.is_null());
  EXPECT_EQ(job["state"], "cancelled") << job.dump();
  EXPECT_NE(job.value("error", "").find("disconnected"), std::string::npos) << job.dump();
  EXPECT_LT(job["step"].get<int>(), 200);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}
