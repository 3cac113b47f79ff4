// Checkpoint::release_resident: the pages of a memory-mapped checkpoint that a forward touched leave this
// process's resident set (RssFile) and come back, with the same values, when read again.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "../test_util.h"
#include "core/memory_info.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

using namespace meshdit;

namespace {

double sum_of(const Tensor& t) {
  double s = 0;
  for (float v : t.to_vector()) s += v;
  return s;
}

TEST(CheckpointRelease, TouchedPagesLeaveTheResidentSetAndComeBack) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "w.safetensors").string();
  const int64_t n = 16 << 20;  // 64 MiB of float32 in two tensors
  std::vector<float> a(size_t(n / 2)), b(size_t(n / 2));
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i % 7), b[i] = float(i % 5);
  ASSERT_TRUE(save_safetensors(file, {{"a", Tensor::from_f32({n / 2}, a)}, {"b", Tensor::from_f32({n / 2}, b)}}).ok());
  a.clear(), b.clear();
  a.shrink_to_fit(), b.shrink_to_fit();

  auto ck = Checkpoint::open(file);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const double before = process_memory().file_mb;
  ASSERT_GE(before, 0) << "no RssFile in /proc/self/status";
  const double want = sum_of(ck->get("a").value()) + sum_of(ck->get("b").value());
  const double touched = process_memory().file_mb;
  EXPECT_GT(touched - before, 48.0) << "reading the weights should map them in";

  ck->release_resident();
  const double released = process_memory().file_mb;
  EXPECT_LT(released - before, 8.0) << "touched " << touched - before << " MB, still " << released - before
                                    << " MB after release_resident";
  EXPECT_EQ(sum_of(ck->get("a").value()) + sum_of(ck->get("b").value()), want);
}

// An alias joined from several row ranges (BFL's final layer with its shift/scale halves swapped) is a copy: the
// source's mapped pages leave the resident set once it is made, so the weight is not resident twice.
TEST(CheckpointRelease, AJoinedAliasLeavesItsSourceUnmapped) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "w.safetensors").string();
  const int64_t rows = 1024, cols = 8192;  // 32 MiB of float32
  std::vector<float> w(size_t(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 11);
  ASSERT_TRUE(save_safetensors(file, {{"w", Tensor::from_f32({rows, cols}, w)}}).ok());

  auto ck = Checkpoint::open(file);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  ASSERT_TRUE(
      ck->add_alias("swapped", std::vector<Checkpoint::RowRange>{{"w", rows / 2, rows}, {"w", 0, rows / 2}}).ok());
  const double before = process_memory().file_mb;
  ASSERT_GE(before, 0) << "no RssFile in /proc/self/status";
  const Tensor t = ck->get("swapped").value();
  EXPECT_LT(process_memory().file_mb - before, 4.0) << "the source stayed resident next to its copy";
  const float* p = t.f32();
  EXPECT_EQ(p[0], w[size_t(rows / 2 * cols)]);  // the second half first
  EXPECT_EQ(p[size_t(rows / 2 * cols)], w[0]);  // then the first
  EXPECT_EQ(p[size_t(rows * cols - 1)], w[size_t(rows / 2 * cols - 1)]);
}

}  // namespace
