// The page of `meshdit serve` in Debian's Chromium, headless, driven by playwright-core
// (tools/browser/serve_page_check.mjs): a prompt typed, Generate clicked, the progress bar seen moving,
// the image in the gallery, a refused size's error shown, and a screenshot that is not blank. Skipped
// where Chromium, node or tools/browser/node_modules (npm ci there) is missing.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <thread>

#include "../test_util.h"
#include "app/serve.h"
#include "io/png.h"

namespace fs = std::filesystem;
using namespace meshdit;

TEST(ServeBrowser, GenerateFromThePageInChromium) {
  const std::string chromium = std::getenv("CHROMIUM") ? std::getenv("CHROMIUM") : "/usr/bin/chromium";
  const fs::path tools = fs::path(MESHDIT_SOURCE_DIR) / "tools" / "browser";
  if (!fs::exists(chromium)) GTEST_SKIP() << chromium << " is not installed (apt-get install chromium)";
  if (!fs::exists(tools / "node_modules" / "playwright-core"))
    GTEST_SKIP() << "no playwright-core: npm ci in " << tools;
  std::string out;
  if (test::run_command("node --version", &out) != 0) GTEST_SKIP() << "no node";

  ServeCommand cmd;
  cmd.port = 0;
  cmd.verbose = false;
  auto server = Server::create(cmd);
  ASSERT_TRUE(server.ok()) << server.error().message;
  auto port = (*server)->bind();
  ASSERT_TRUE(port.ok()) << port.error().message;
  std::thread serving([&] { (*server)->run(); });

  const test::TempDir dir;
  const std::string shot = (dir.path() / "page.png").string();
  const int rc = test::run_command("CHROMIUM=" + chromium + " node " + (tools / "serve_page_check.mjs").string() +
                                       " http://127.0.0.1:" + std::to_string(*port) + "/ " + shot,
                                   &out);
  (*server)->stop(true);
  serving.join();
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"ok\":true"), std::string::npos) << out;
  EXPECT_NE(out.find("seed 42"), std::string::npos) << "the gallery caption lacks the parameters: " << out;

  int w = 0, h = 0;
  auto px = read_png(shot, &w, &h);
  ASSERT_TRUE(px.ok()) << px.error().message;
  EXPECT_GT(w, 500);
  EXPECT_GT(h, 300);
  // Not blank: many colours (text, the form, the generated image), not one background.
  std::set<uint32_t> colours;
  for (size_t i = 0; i + 2 < px->size(); i += 3)
    colours.insert(uint32_t((*px)[i]) << 16 | uint32_t((*px)[i + 1]) << 8 | (*px)[i + 2]);
  EXPECT_GT(colours.size(), 50u) << "the screenshot is (nearly) blank";
  // A copy for the README when asked (MESHDIT_SCREENSHOT=path).
  if (const char* keep = std::getenv("MESHDIT_SCREENSHOT"))
    fs::copy_file(shot, keep, fs::copy_options::overwrite_existing);
}
