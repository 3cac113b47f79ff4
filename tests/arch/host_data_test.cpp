// Code above the backend (layers, models, encoders, schedulers, pipelines, parallel) never reads or writes
// tensor memory on the host: it calls ops and collectives, which run where the tensor lives, so a GPU
// backend runs it unedited. This scans those folders for the host accessors of Tensor and fails with the
// file:line of every use that the allow-list below does not name.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "../test_util.h"

namespace fs = std::filesystem;

namespace {

const char* const kScannedDirs[] = {"src/layers",     "src/models",    "src/encoders",
                                    "src/schedulers", "src/pipelines", "src/parallel"};

// Files that may touch tensor memory, each with the reason. Keep it short: a new entry needs a reason of
// the same kind, and an entry whose file no longer needs it fails the test until it is removed.
const std::map<std::string, std::string> kAllowed = {
    // Hands a tensor's buffer address to the communicator, which works on the memory of the tensor's
    // device (host memory for MPI, device memory for NCCL): the one place tensors meet raw buffers.
    {"src/parallel/collectives.cpp", "buffer addresses for the communicator"},
};

// Tensor's host accessors: data<T>(), f32(), raw() and to_vector().
const std::regex kAccess(R"(\bdata<|\bf32\(\)|\braw\(\)|\bto_vector\(\))");

// The line without its // comment, so prose that names an accessor does not count.
std::string code_of(const std::string& line) {
  const size_t c = line.find("//");
  return c == std::string::npos ? line : line.substr(0, c);
}

struct Hit {
  std::string file;  // relative to the repository
  int line;
  std::string text;
};

std::vector<Hit> scan(const fs::path& root, size_t* files) {
  std::vector<Hit> hits;
  *files = 0;
  for (const char* dir : kScannedDirs) {
    if (!fs::is_directory(root / dir)) continue;
    for (const auto& e : fs::recursive_directory_iterator(root / dir)) {
      const std::string ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".h" && ext != ".cpp")) continue;
      ++*files;
      std::ifstream in(e.path());
      std::string line;
      for (int n = 1; std::getline(in, line); ++n)
        if (std::regex_search(code_of(line), kAccess))
          hits.push_back({fs::relative(e.path(), root).generic_string(), n, line});
    }
  }
  return hits;
}

TEST(HostData, AccessorPatternSkipsComments) {
  EXPECT_TRUE(std::regex_search(code_of("  float* p = x.f32();"), kAccess));
  EXPECT_TRUE(std::regex_search(code_of("  auto* q = ids.data<int64_t>();"), kAccess));
  EXPECT_TRUE(std::regex_search(code_of("  std::vector<float> v = t.to_vector();"), kAccess));
  EXPECT_TRUE(std::regex_search(code_of("  madvise(w.raw(), n, MADV_WILLNEED);"), kAccess));
  EXPECT_FALSE(std::regex_search(code_of("  Tensor y = ops::scale(x, 2.0f);  // was x.f32() in a loop"), kAccess));
  EXPECT_FALSE(std::regex_search(code_of("  metadata<int> m; bf32(); draw();"), kAccess));
}

TEST(HostData, NoTensorMemoryAccessAboveTheBackend) {
  const fs::path root = meshdit::test::repo_dir();
  size_t files = 0;
  const std::vector<Hit> hits = scan(root, &files);
  ASSERT_GT(files, 20u) << "found too few sources under " << root << ": is MESHDIT_SOURCE_DIR right?";

  std::string offending;
  std::set<std::string> used;
  for (const Hit& h : hits) {
    if (kAllowed.count(h.file)) {
      used.insert(h.file);
      continue;
    }
    offending += "\n  " + h.file + ":" + std::to_string(h.line) + ": " + h.text;
  }
  EXPECT_TRUE(offending.empty()) << "tensor memory touched outside src/backend, src/io and src/app (use an op from "
                                    "backend/ops.h or backend/model_ops.h, or a collective from "
                                    "parallel/collectives.h):"
                                 << offending;
  for (const auto& [file, why] : kAllowed)
    EXPECT_TRUE(used.count(file)) << "allow-list entry " << file << " (" << why
                                  << ") no longer touches tensor memory: remove it";
}

}  // namespace
