// Every reference case whose component is implemented must pass `meshdit check`; every other case must be
// listed below as pending, with the issue that brings it, so no case is skipped without saying so. The copy
// of the cases under tests/fixtures must be byte-identical to ../shared/fixtures when that exists.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/check.h"
#include "app/runners.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

struct PendingCase {
  const char* name;
  int issue;
};

// The cases no runner handles yet. An entry leaves with the commit that registers its runner
// (PendingCasesAreStillPending fails until it does, so the list cannot go stale).
// Empty since #11 and #12 landed every case; a new case with no runner yet goes here with its issue.
constexpr std::array<PendingCase, 0> kPending{};

const PendingCase* find_pending(const std::string& name) {
  for (const auto& p : kPending)
    if (name == p.name) return &p;
  return nullptr;
}

std::string class_of(const std::string& dir) {
  auto c = case_class(dir);
  return c.ok() ? c.value() : "(unreadable: " + c.error().message + ")";
}

// The others are accounted for by EveryCaseIsSupportedOrPending.
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

// The same cases with every linear in bf16 precision (emulated where the CPU has no bf16 dot products, so
// the figures are the same everywhere), at the bf16 tolerances of check.h's bf16_tolerance_for_class.
class FixtureCaseBf16 : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureCaseBf16, MatchesReferenceInBf16) {
  const std::string dir = test::fixtures_dir() + "/" + GetParam();
  CheckOptions opts;
  opts.precision = Precision::BF16;
  auto rep = run_check(dir, opts);
  ASSERT_TRUE(rep.ok()) << rep.error().message;
  EXPECT_TRUE(rep->pass()) << rep->format();
  EXPECT_EQ(compute_precision(), Precision::F32) << "run_check must restore the precision";
}

INSTANTIATE_TEST_SUITE_P(Cases, FixtureCaseBf16, ::testing::ValuesIn(supported_cases()),
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

TEST(Fixtures, EveryCaseIsSupportedOrPending) {
  register_builtin_runners();
  const std::string dir = test::fixtures_dir();
  for (const auto& c : test::case_names(dir)) {
    if (is_case_supported(dir + "/" + c) || find_pending(c)) continue;
    ADD_FAILURE() << "case " << c << " (class '" << class_of(dir + "/" + c)
                  << "') has no runner: add a runner or list it as pending with its issue in kPending";
  }
}

TEST(Fixtures, PendingCasesAreStillPending) {
  register_builtin_runners();
  const std::string dir = test::fixtures_dir();
  const std::vector<std::string> cases = test::case_names(dir);
  for (const auto& p : kPending) {
    // The pipeline cases are not copied to tests/fixtures, so only the shared folder has every case.
    if (std::find(cases.begin(), cases.end(), p.name) == cases.end()) {
      EXPECT_TRUE(test::shared_fixtures_dir().empty())
          << "pending case " << p.name << " (#" << p.issue << ") is not in " << dir << ": remove it from kPending";
      continue;
    }
    EXPECT_FALSE(is_case_supported(dir + "/" + p.name))
        << "case " << p.name << " (class '" << class_of(dir + "/" + p.name) << "') has a runner now (#" << p.issue
        << "): remove it from kPending so its fixture is checked";
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
