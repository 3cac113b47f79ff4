// app/serve_none.cpp, `meshdit serve` of a build without cpp-httplib (MESHDIT_WITH_HTTPLIB=OFF), compiled into
// meshdit_none_tests in every build: no server is made, and run_serve says why on stderr and returns 1.
#include <gtest/gtest.h>

#include <string>

#include "app/serve.h"

using namespace meshdit;

namespace {

constexpr const char* kWhy = "this meshdit was built without cpp-httplib (libcpp-httplib-dev)";

TEST(ServeNone, NoServerIsMade) {
  EXPECT_EQ(http_library(), "");
  auto s = Server::create(ServeCommand{});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message.rfind(kWhy, 0), 0u) << s.error().message;
}

TEST(ServeNone, RunServeSaysWhyAndFails) {
  testing::internal::CaptureStderr();
  const int rc = run_serve(ServeCommand{});
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(err.rfind(std::string("meshdit serve: ") + kWhy, 0), 0u) << err;
  EXPECT_NE(err.find("tools/setup-debian.sh"), std::string::npos) << err;
}

}  // namespace
