// The split layers on a group of one are the plain layers, bit for bit (a one-rank mesh runs the split code
// path unchanged). Their equality to the whole tensor's layer on 2 and 4 ranks is in tests/mpi/split_test.cpp.
#include "layers/spatial_split.h"

#include <gtest/gtest.h>

#include <map>

#include "../test_util.h"

using namespace meshdit;

namespace {

Conv2d conv3x3(int64_t in, int64_t out, unsigned seed) {
  Conv2d c;
  c.weight = test::random_tensor({out, in, 3, 3}, seed, 0.3f);
  c.bias = test::random_tensor({out}, seed + 1);
  c.params.pad_top = c.params.pad_bottom = c.params.pad_left = c.params.pad_right = 1;
  return c;
}

GroupNorm group_norm(int64_t groups, int64_t channels, unsigned seed) {
  GroupNorm n;
  n.groups = groups;
  n.weight = test::random_tensor({channels}, seed);
  n.bias = test::random_tensor({channels}, seed + 1);
  return n;
}

TEST(SpatialSplit, GroupOfOneIsThePlainLayer) {
  LocalComm one;
  const Tensor x = test::random_tensor({2, 4, 5, 6}, 1);
  const Conv2d conv = conv3x3(4, 3, 2);
  for (int64_t axis : {2, 3}) {
    const BandSplit s(one, axis, x.size(axis));
    EXPECT_EQ(conv2d_split(conv, x, s).to_vector(), conv(x).to_vector()) << "axis " << axis;
  }
  const GroupNorm norm = group_norm(2, 4, 3);
  const Tensor video = test::random_tensor({1, 4, 3, 5, 6}, 4);
  EXPECT_EQ(group_norm_split(norm, video, Act::SiLU, BandSplit(one, 2, 3)).to_vector(),
            norm(video, Act::SiLU).to_vector());
  const Tensor q = test::random_tensor({2, 30, 2, 8}, 5), k = test::random_tensor({2, 30, 2, 8}, 6),
               v = test::random_tensor({2, 30, 2, 8}, 7);
  EXPECT_EQ(attention_split(q, k, v, 0.3f, BandSplit(one, 2, 5), /*tokens_per_entry=*/6).to_vector(),
            ops::attention(q, k, v, 0.3f).to_vector());
}

TEST(SpatialSplit, PointwiseConvNeedsNoHalo) {
  // A 1x1 conv (a shortcut, post_quant_conv) on a band of a larger split never talks to the neighbours:
  // the geometry-only communicator fails the test if it is asked to.
  auto comm = test::geometry_comm(1, 3);
  const BandSplit rows(*comm, 2, 9);
  Conv2d pw;
  pw.weight = test::random_tensor({3, 4, 1, 1}, 8);
  const Tensor band = test::random_tensor({1, 4, 3, 5}, 9);
  EXPECT_EQ(conv2d_split(pw, band, rows).to_vector(), pw(band).to_vector());
}

TEST(SpatialSplit, ReportSplitReportsOnlyWhenSomeoneListens) {
  LocalComm one;
  const BandSplit s(one, 2, 3);
  const Tensor x = test::random_tensor({1, 2, 3, 4}, 10);
  std::map<std::string, Tensor> seen;
  const Hooks hooks = [&](const std::string& n, const Tensor& t) { seen[n] = t.clone(); };
  report_split(nullptr, "hook.none", x, s);
  report_split(&hooks, "hook.x", x, s);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen["hook.x"].to_vector(), x.to_vector());
}

}  // namespace
