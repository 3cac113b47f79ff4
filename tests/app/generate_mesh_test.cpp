// `mpirun -np 2 meshdit generate --mesh 1x2` as a user runs it: the same image as one process (within
// float rounding), written once by rank 0, and one trace with a track per rank where collectives are
// spans carrying their bytes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "../test_util.h"
#include "io/json_config.h"
#include "io/png.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string mpirun(int np) {
  // Open MPI refuses root without the flag (CI runs as root); leak checking cannot see through MPI's
  // own never-freed allocations (see tests/CMakeLists.txt).
  return std::string("ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_btl=self,vader MESHDIT_THREADS=1 ") + MESHDIT_MPIEXEC +
         " --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(np) + " ";
}

std::vector<uint8_t> pixels(const fs::path& p) {
  int w = 0, h = 0;
  auto px = read_png(p.string(), &w, &h);
  EXPECT_TRUE(px.ok()) << px.error().message;
  return px.ok() ? *px : std::vector<uint8_t>{};
}

TEST(GenerateOnMesh, SameImageAndOneTraceWithATrackPerRank) {
  const test::TempDir dir;
  const fs::path& d = dir.path();
  const std::string args =
      " generate --no-progress --prompt 'a small purple diamond' --seed 7 --width 64"
      " --height 64 --steps 2 -o ";
  std::string out;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + args + (d / "one.png").string(), &out), 0) << out;
  ASSERT_EQ(test::run_command(mpirun(2) + MESHDIT_CLI + args + (d / "two.png").string() +
                                  " --mesh 1x2 --parallel tp=2 --trace " + (d / "trace.json").string(),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("mesh 1x2: cfg=1,sp=1,tp=2"), std::string::npos) << out;
  const auto a = pixels(d / "one.png"), b = pixels(d / "two.png");
  ASSERT_EQ(a.size(), b.size());
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  EXPECT_LE(worst, 2) << "8-bit pixels differ by more than float rounding";

  auto tr = load_json((d / "trace.json").string());
  ASSERT_TRUE(tr.ok()) << tr.error().message;
  std::set<int> pids;
  int comm_with_bytes = 0;
  for (const auto& e : tr.value()["traceEvents"]) {
    pids.insert(e.value("pid", -1));
    if (e.value("cat", "") == "comm" && e.contains("args") && e["args"].value("bytes", 0) > 0) ++comm_with_bytes;
  }
  EXPECT_EQ(pids, (std::set<int>{0, 1}));
  EXPECT_GT(comm_with_bytes, 0);
}

TEST(GenerateOnMesh, MeshThatDoesNotFitIsOneClearError) {
  std::string out;
  const int rc = test::run_command(
      mpirun(2) + MESHDIT_CLI + " generate --no-progress -p x --steps 1 -o /tmp/x.png --mesh 2x2", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--mesh 2x2 has 4 ranks but 2 processes were started"), std::string::npos) << out;
}

}  // namespace
