// SequenceShard's bookkeeping for every SP rank, seen from one process (a geometry-only communicator), and
// its pass-through without SP. The gather and joint attention on real ranks are in tests/mpi/split_test.cpp.
#include "layers/sequence_shard.h"

#include <gtest/gtest.h>

#include "../test_util.h"

using namespace meshdit;

namespace {

// Rows [a, b) of a table, as values.
std::vector<float> rows(const Tensor& t, int64_t a, int64_t b) { return t.slice(0, a, b).contiguous().to_vector(); }

std::vector<float> cat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(SequenceShard, WithoutSpEverythingPassesThrough) {
  const int64_t N = 6, L = 4;
  LocalComm one;
  for (const ParallelContext& par : {ParallelContext{}, ParallelContext{nullptr, &one, SpMode::Ring}}) {
    const SequenceShard s(N, L, true, par);
    EXPECT_FALSE(s.split());
    EXPECT_EQ(s.layout(), nullptr);
    EXPECT_EQ(s.range().begin, 0);
    EXPECT_EQ(s.local_tokens(), N);
    const Tensor x = test::random_tensor({2, N, 3}, 1), table = test::random_tensor({L + N, 8}, 2);
    EXPECT_EQ(s.local(x).to_vector(), x.to_vector());
    EXPECT_EQ(s.local_rows(table).to_vector(), table.to_vector());
    EXPECT_EQ(s.gather(x).to_vector(), x.to_vector());
  }
}

TEST(SequenceShard, EachRankTakesItsImageTokensAndTheirTableRows) {
  const int64_t N = 7, L = 3;  // 3 + 2 + 2 image tokens over 3 ranks
  const std::vector<int64_t> sizes{3, 2, 2};
  const Tensor x = test::random_tensor({2, N, 5}, 3);
  const Tensor txt_first = test::random_tensor({L + N, 4}, 4), img_first = test::random_tensor({N + L, 4}, 5);
  int64_t at = 0;
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    auto sp = test::geometry_comm(r, 3);
    const ParallelContext par{nullptr, sp.get(), SpMode::Ring};
    const SequenceShard flux(N, L, /*txt_first=*/true, par), sd3(N, L, /*txt_first=*/false, par);
    for (const SequenceShard* s : {&flux, &sd3}) {
      EXPECT_TRUE(s->split());
      EXPECT_EQ(s->range().begin, at);
      EXPECT_EQ(s->local_tokens(), sizes[size_t(r)]);
      ASSERT_NE(s->layout(), nullptr);
      EXPECT_EQ(s->layout()->n_txt, L);
      EXPECT_EQ(s->layout()->img_sizes, sizes);
      const Tensor mine = s->local(x);
      EXPECT_TRUE(mine.is_contiguous());
      EXPECT_EQ(mine.to_vector(), x.slice(1, at, at + sizes[size_t(r)]).contiguous().to_vector());
    }
    EXPECT_TRUE(flux.layout()->txt_first);
    EXPECT_FALSE(sd3.layout()->txt_first);
    const int64_t e = at + sizes[size_t(r)];
    // The local joint sequence keeps the model's order: [text, shard] or [shard, text].
    EXPECT_EQ(flux.local_rows(txt_first).to_vector(), cat(rows(txt_first, 0, L), rows(txt_first, L + at, L + e)));
    EXPECT_EQ(sd3.local_rows(img_first).to_vector(), cat(rows(img_first, at, e), rows(img_first, N, N + L)));
    const RopeTables rope = flux.local(RopeTables{txt_first, img_first});
    EXPECT_EQ(rope.cos.shape(), (Shape{L + sizes[size_t(r)], 4}));
    EXPECT_EQ(rope.sin.to_vector(), cat(rows(img_first, 0, L), rows(img_first, L + at, L + e)));
    at = e;
  }
}

}  // namespace
