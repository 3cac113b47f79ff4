// Checkpoint::copy_into_memory: weights of 1 MiB and more come out of the file's mapping as copies in anonymous
// memory (the same bytes, the mapping's pages dropped); small ones stay views; off, everything is a view. And
// the policy that turns it on for a denoiser (pipelines/components.h copy_weights_into_memory).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "../test_util.h"
#include "core/memory_info.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "pipelines/components.h"

using namespace meshdit;

namespace {

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(CheckpointMemory, BigWeightsAreCopiesOutOfTheMappingSmallOnesViews) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "w.safetensors").string();
  const int64_t rows = 512, cols = 2048;  // 4 MiB of float32: a copy; 8 KiB: a view
  std::vector<float> big(size_t(rows * cols)), small(2048);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 13) - 6.0f;
  for (size_t i = 0; i < small.size(); ++i) small[i] = float(i % 3);
  ASSERT_TRUE(save_safetensors(file, {{"big", Tensor::from_f32({rows, cols}, big)},
                                      {"small", Tensor::from_f32({2048}, small)},
                                      {"more", Tensor::from_f32({rows, cols}, big)}})
                  .ok());
  auto ck = Checkpoint::open(file);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const Tensor stored = ck->get_stored("big").value();
  ASSERT_TRUE(stored.read_only());

  // Off (the default): views into the mapping.
  EXPECT_EQ(ck->get("big", {rows, cols}).value().raw(), stored.raw());

  ck->copy_into_memory(true);
  const Tensor a = ck->get("big", {rows, cols}).value();
  const Tensor b = ck->get("more", {rows, cols}).value();
  const Tensor s = ck->get("small", {2048}).value();
  EXPECT_FALSE(a.read_only());
  EXPECT_NE(a.raw(), stored.raw());
  EXPECT_TRUE(same_bytes(a, Tensor::from_f32({rows, cols}, big)));
  EXPECT_TRUE(same_bytes(b, Tensor::from_f32({rows, cols}, big)));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 64, 0u);
  EXPECT_TRUE(s.read_only()) << "a small weight stays a view";
  EXPECT_TRUE(same_bytes(s, Tensor::from_f32({2048}, small)));
  // A row shard that is the whole weight is copied too; one that is not is a copy anyway.
  const Tensor whole = ck->get_sharded("big", {rows, cols}, Shard::Rows, {{0, rows}}).value();
  EXPECT_FALSE(whole.read_only());
  EXPECT_TRUE(same_bytes(whole, Tensor::from_f32({rows, cols}, big)));
}

TEST(CheckpointMemory, CopiesOutliveTheCheckpoint) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "w.safetensors").string();
  std::vector<float> w(size_t(1) << 19);  // 2 MiB
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 17);
  ASSERT_TRUE(save_safetensors(file, {{"w", Tensor::from_f32({int64_t(w.size())}, w)}}).ok());
  Tensor copy;
  {
    auto ck = Checkpoint::open(file);
    ASSERT_TRUE(ck.ok()) << ck.error().message;
    ck->copy_into_memory(true);
    copy = ck->get("w", {int64_t(w.size())}).value();
  }
  EXPECT_FALSE(copy.read_only());
  EXPECT_TRUE(same_bytes(copy, Tensor::from_f32({int64_t(w.size())}, w)));
}

TEST(CheckpointMemory, PolicyFollowsMeshditWeightsAndAvailableMemory) {
  const char* old = std::getenv("MESHDIT_WEIGHTS");
  const std::string saved = old ? old : "";
  ::unsetenv("MESHDIT_WEIGHTS");
  EXPECT_TRUE(copy_weights_into_memory(1 << 20)) << "1 MiB fits in half of any machine's available memory";
  const uint64_t too_big = uint64_t(available_memory_bytes()) + (uint64_t(1) << 30);
  EXPECT_FALSE(copy_weights_into_memory(too_big));
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const std::string saved_local = local ? local : "";
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
  EXPECT_FALSE(copy_weights_into_memory(1 << 20)) << "two ranks on this host share the page cache instead";
  if (local)
    ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", saved_local.c_str(), 1);
  else
    ::unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  ::setenv("MESHDIT_WEIGHTS", "map", 1);
  EXPECT_FALSE(copy_weights_into_memory(1 << 20));
  ::setenv("MESHDIT_WEIGHTS", "memory", 1);
  EXPECT_TRUE(copy_weights_into_memory(too_big));
  if (old)
    ::setenv("MESHDIT_WEIGHTS", saved.c_str(), 1);
  else
    ::unsetenv("MESHDIT_WEIGHTS");
}

}  // namespace
