// Every reference case whose component is implemented must pass `meshdit check`; the copy of the cases
// under tests/fixtures must be byte-identical to ../shared/fixtures when that exists.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/check.h"
#include "app/runners.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::vector<std::string> supported_cases() {
  register_builtin_runners();
  std::vector<std::string> out;
  const std::string dir = test::fixtures_dir();
  for (const auto& c : test::case_names(dir))
    if (is_case_supported(dir + "/" + c)) out.push_back(c);
  return out;
}

class FixtureCase : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureCase, MatchesReference) {
  const std::string dir = test::fixtures_dir() + "/" + GetParam();
  auto rep = run_check(dir);
  ASSERT_TRUE(rep.ok()) << rep.error().message;
  EXPECT_TRUE(rep->pass()) << rep->format();
}

INSTANTIATE_TEST_SUITE_P(Cases, FixtureCase, ::testing::ValuesIn(supported_cases()),
                         [](const auto& info) { return info.param; });

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Fixtures, CopyIsVerbatimAndComplete) {
  const std::string shared = test::shared_fixtures_dir();
  const std::string local = test::repo_dir() + "/tests/fixtures";
  if (shared.empty()) {
    // Without ../shared there is nothing to compare with; the local copy must still hold cases.
    EXPECT_FALSE(test::case_names(local).empty()) << "no fixtures in " << local;
    return;
  }
  for (const auto& c : test::case_names(shared)) {
    if (c.rfind("pipe_", 0) == 0) continue;  // the large pipeline cases are not copied
    const fs::path sd = fs::path(shared) / c, ld = fs::path(local) / c;
    ASSERT_TRUE(fs::is_directory(ld)) << "case " << c << " is missing from tests/fixtures";
    for (const auto& e : fs::recursive_directory_iterator(sd)) {
      if (!e.is_regular_file()) continue;
      const fs::path rel = fs::relative(e.path(), sd);
      ASSERT_TRUE(fs::exists(ld / rel)) << "tests/fixtures/" << c << "/" << rel.string() << " is missing";
      EXPECT_TRUE(read_file(e.path()) == read_file(ld / rel))
          << "tests/fixtures/" << c << "/" << rel.string() << " differs from ../shared/fixtures";
    }
  }
}

TEST(Fixtures, UnknownClassIsAClearError) {
  register_builtin_runners();
  const test::TempDir tmp;
  tmp.write("meta.json", R"({"class": "diffusers.NoSuchModel"})");
  auto rep = run_check(tmp.str());
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.error().message.find("not implemented yet"), std::string::npos);
  EXPECT_NE(rep.error().message.find("diffusers.SD3Transformer2DModel"), std::string::npos);
}

}  // namespace
