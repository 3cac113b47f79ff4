// BandSplit's geometry for every rank of a group, seen from one process (a geometry-only communicator), and
// its collectives on a group of one. The multi-rank exchanges are in tests/mpi/split_test.cpp.
#include "parallel/band_split.h"

#include <gtest/gtest.h>

#include "../test_util.h"

using namespace meshdit;

namespace {

TEST(BandSplit, BandsAreBalancedContiguousAndInRankOrder) {
  const std::vector<int64_t> want{3, 3, 2, 2};  // 10 over 4: the first 10 % 4 bands get one more
  int64_t at = 0;
  for (int r = 0; r < 4; ++r) {
    auto comm = test::geometry_comm(r, 4);
    const BandSplit s(*comm, 2, 10);
    EXPECT_EQ(s.sizes(), want);
    EXPECT_EQ(s.total(), 10);
    EXPECT_EQ(s.band_size(), want[size_t(r)]);
    EXPECT_EQ(s.band().begin, at);
    EXPECT_EQ(s.band().end, at + want[size_t(r)]);
    EXPECT_EQ(s.prev(), r == 0 ? -1 : r - 1);
    EXPECT_EQ(s.next(), r == 3 ? -1 : r + 1);
    at += want[size_t(r)];
  }
}

TEST(BandSplit, UpsamplingScalesEveryBand) {
  auto comm = test::geometry_comm(2, 3);
  BandSplit s(*comm, 3, 7);  // 3 + 2 + 2
  s.upsampled(2);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{6, 4, 4}));
  EXPECT_EQ(s.total(), 14);
  EXPECT_EQ(s.band().begin, 10);
  s.upsampled(4);
  EXPECT_EQ(s.band().begin, 40);
  EXPECT_EQ(s.band().end, 56);
}

TEST(BandSplit, GivenSizes) {
  // A causal video split: the first band holds the single leading frame and one more group.
  auto comm = test::geometry_comm(1, 2);
  const BandSplit s(*comm, 2, std::vector<int64_t>{5, 8});
  EXPECT_EQ(s.total(), 13);
  EXPECT_EQ(s.band().begin, 5);
  EXPECT_EQ(s.band().end, 13);
}

TEST(BandSplit, LocalIsTheBandOfTheWholeAlongTheAxis) {
  const Tensor video = test::random_tensor({1, 2, 7, 3, 4}, 1);  // [B, C, T, H, W]
  auto comm = test::geometry_comm(1, 3);                         // frames 3 + 2 + 2: rank 1 has [3, 5)
  const BandSplit frames(*comm, 2, 7);
  EXPECT_EQ(frames.local(video).to_vector(), video.slice(2, 3, 5).to_vector());
  const BandSplit rows(*comm, 3, 3);  // one row each
  EXPECT_EQ(rows.local(video).to_vector(), video.slice(3, 1, 2).to_vector());
}

TEST(BandSplit, ConvHaloFollowsKernelAndPadding) {
  const Halo same = conv_halo(3, 1, 1, 1);
  EXPECT_EQ(same.before, 1);
  EXPECT_EQ(same.after, 1);
  const Halo causal = conv_halo(3, 1, 2, 0);  // a causal temporal conv: two frames of the past
  EXPECT_EQ(causal.before, 2);
  EXPECT_EQ(causal.after, 0);
  const Halo pointwise = conv_halo(1, 1, 0, 0);
  EXPECT_EQ(pointwise.before + pointwise.after, 0);
}

TEST(BandSplit, GroupOfOneGathersAndExchangesNothing) {
  LocalComm one;
  const BandSplit s(one, 2, 5);
  EXPECT_EQ(s.prev(), -1);
  EXPECT_EQ(s.next(), -1);
  const Tensor x = test::random_tensor({2, 3, 5, 4}, 2);
  EXPECT_EQ(s.local(x).to_vector(), x.to_vector());
  EXPECT_EQ(s.gather(x).to_vector(), x.to_vector());
  const HaloBand h = exchange_halo(x, Halo{2, 1}, s);
  EXPECT_EQ(h.before, 0);
  EXPECT_EQ(h.after, 0);
  EXPECT_EQ(h.x.shape(), x.shape());
  EXPECT_EQ(h.x.to_vector(), x.to_vector());
}

}  // namespace
