// The shared parallel pieces on 2 and 4 real ranks: the sequence shard of a DiT (gather, joint attention
// over shards in both token orders and both SP modes) and the band split of a feature map along axes the
// image VAE does not use (columns; a video's frames with a causal halo, its rows), each against the whole
// tensor's result on one rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../test_util.h"
#include "backend/model_ops.h"
#include "backend/ops.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "layers/norms.h"
#include "layers/sequence_shard.h"
#include "layers/spatial_split.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;

namespace {

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const std::vector<float> x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  double m = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) m = std::max(m, std::abs(double(x[i]) - y[i]));
  return m;
}

std::vector<float> values(const Tensor& t) { return t.contiguous().to_vector(); }

// ---- SequenceShard ------------------------------------------------------------------------------------

TEST(SequenceShardOnRanks, GatherOfTheLocalTokensIsTheWhole) {
  auto world = world_communicator();
  const int P = world->size();
  const ParallelContext par{nullptr, world.get(), SpMode::Ring};
  for (int64_t N : {int64_t(P), int64_t(7), int64_t(2 * P + 1)}) {
    const Tensor x = test::random_tensor({2, N, 6}, 1);  // the same on every rank
    const SequenceShard shard(N, 3, /*txt_first=*/true, par);
    EXPECT_EQ(values(shard.gather(shard.local(x))), values(x)) << "N " << N;
  }
}

// Joint attention over [text, shards] (Flux) or [shards, text] (SD3) equals attention over the whole joint
// sequence: image rows after the gather, text rows on every rank.
TEST(SequenceShardOnRanks, JointAttentionOverShardsIsTheWholeAttention) {
  auto world = world_communicator();
  const int P = world->size();
  const int64_t B = 2, N = 2 * P + 1, L = 3, H = 4, D = 8;  // H divides by 2 and 4: Ulysses runs too
  const float scale = 1.0f / std::sqrt(float(D));
  for (SpMode mode : {SpMode::Ring, SpMode::Ulysses})
    for (bool txt_first : {true, false}) {
      SCOPED_TRACE(std::string(sp_mode_name(mode)) + (txt_first ? ", text first" : ", image first"));
      const ParallelContext par{nullptr, world.get(), mode};
      const SequenceShard shard(N, L, txt_first, par);
      Tensor img[3], txt[3], whole[3], local[3];
      for (int i = 0; i < 3; ++i) {
        img[i] = test::random_tensor({B, N, H, D}, 10 + unsigned(i));
        txt[i] = test::random_tensor({B, L, H, D}, 20 + unsigned(i));
        whole[i] = txt_first ? concat({txt[i], img[i]}, 1) : concat({img[i], txt[i]}, 1);
        local[i] = txt_first ? concat({txt[i], shard.local(img[i])}, 1) : concat({shard.local(img[i]), txt[i]}, 1);
      }
      const Tensor ref = ops::attention(whole[0], whole[1], whole[2], scale);
      ASSERT_NE(shard.layout(), nullptr);
      const Tensor out = joint_attention(local[0], local[1], local[2], scale, *shard.layout(), &par);
      const int64_t n = shard.local_tokens();
      const int64_t img_at = txt_first ? L : 0, txt_at = txt_first ? 0 : n, ref_img = txt_first ? L : 0,
                    ref_txt = txt_first ? 0 : N;
      const Tensor img_out = shard.gather(out.slice(1, img_at, img_at + n).contiguous());
      EXPECT_LT(max_abs_diff(img_out, ref.slice(1, ref_img, ref_img + N)), 1e-5);
      EXPECT_LT(max_abs_diff(out.slice(1, txt_at, txt_at + L), ref.slice(1, ref_txt, ref_txt + L)), 1e-5);
    }
}

// Self-attention over video tokens alone (Wan: the text is a separate cross-attention): a layout without
// text tokens, ring and Ulysses, with the RoPE rows of the shard.
TEST(SequenceShardOnRanks, AttentionOverShardsWithoutTextIsTheWholeAttention) {
  auto world = world_communicator();
  const int P = world->size();
  const int64_t B = 2, N = 3 * P + 1, H = 4, D = 8;
  const float scale = 1.0f / std::sqrt(float(D));
  for (SpMode mode : {SpMode::Ring, SpMode::Ulysses}) {
    SCOPED_TRACE(sp_mode_name(mode));
    const ParallelContext par{nullptr, world.get(), mode};
    const SequenceShard shard(N, /*n_txt=*/0, /*txt_first=*/true, par);
    ASSERT_NE(shard.layout(), nullptr);
    EXPECT_EQ(shard.layout()->n_txt, 0);
    const Tensor table = test::random_tensor({N, D}, 30);
    EXPECT_EQ(values(shard.local_rows(table)), values(table.slice(0, shard.range().begin, shard.range().end)));
    Tensor whole[3], local[3];
    for (int i = 0; i < 3; ++i) {
      whole[i] = test::random_tensor({B, N, H, D}, 40 + unsigned(i));
      local[i] = shard.local(whole[i]);
    }
    const Tensor ref = ops::attention(whole[0], whole[1], whole[2], scale);
    const Tensor out = joint_attention(local[0], local[1], local[2], scale, *shard.layout(), &par);
    EXPECT_LT(max_abs_diff(shard.gather(out.contiguous()), ref), 1e-5);
  }
}

// ---- RMSNormAcrossHeads ---------------------------------------------------------------------------------

// Each rank normalises its heads' channels with the mean square of all of them: the ranks' outputs side by
// side are the unsplit RMSNorm's.
TEST(RMSNormAcrossHeadsOnRanks, ShardsNormaliseWithTheWholeMeanSquare) {
  auto world = world_communicator();
  const int P = world->size();
  const int64_t head_dim = 3, heads = 2 * P, dim = heads * head_dim;
  const Tensor w = test::random_tensor({dim}, 50);
  const Tensor x = test::random_tensor({2, 5, dim}, 51, 3.0f);
  test::TempDir d("rms_" + std::to_string(world->rank()));
  ASSERT_TRUE(save_safetensors(d.str() + "/w.safetensors", {{"n.weight", w}}).ok());
  auto ck = Checkpoint::open(d.str() + "/w.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const ParallelContext par{world.get(), nullptr, SpMode::Ring};
  const Range h = shard_range(heads, P, world->rank());
  const Range ch{h.begin * head_dim, h.end * head_dim};
  auto split = RMSNormAcrossHeads::load(*ck, "n", dim, ch, 1e-6f, &par);
  ASSERT_TRUE(split.ok()) << split.error().message;
  EXPECT_EQ(split->weight.shape(), (Shape{ch.size()}));
  auto one = RMSNormAcrossHeads::load(*ck, "n", dim, Range{0, dim}, 1e-6f, nullptr);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->reduce, nullptr);
  const Tensor ref = ops::rms_norm(x, &w, 1e-6f);
  EXPECT_LT(max_abs_diff((*one)(x), ref), 1e-6);
  const Tensor mine = (*split)(x.slice(2, ch.begin, ch.end).contiguous());
  EXPECT_LT(max_abs_diff(all_gather(mine, 2, *world), ref), 2e-6);
}

// ---- BandSplit and the split layers -------------------------------------------------------------------

// A video [B, C, T, H, W]: the band with its halo is the whole tensor's slice around it, and nothing is
// added at the ends of the axis.
TEST(BandSplitOnRanks, HaloIsTheNeighboursEntries) {
  auto world = world_communicator();
  const int P = world->size(), r = world->rank();
  const Tensor video = test::random_tensor({1, 3, 2 * P + 1, P + 2, 2 * P + 1}, 30);  // bands of >= 2 frames
  struct Case {
    int64_t axis;
    Halo halo;
  };
  // Frames with a causal conv's halo, rows with a 3-tap one, columns with a lopsided one.
  for (const Case& c : {Case{2, Halo{2, 0}}, Case{3, Halo{1, 1}}, Case{4, Halo{1, 2}}}) {
    SCOPED_TRACE("axis " + std::to_string(c.axis));
    const BandSplit split(*world, c.axis, video.size(c.axis));
    const Range b = split.band();
    const HaloBand h = exchange_halo(split.local(video).contiguous(), c.halo, split);
    EXPECT_EQ(h.before, r > 0 ? c.halo.before : 0);
    EXPECT_EQ(h.after, r + 1 < P ? c.halo.after : 0);
    EXPECT_EQ(values(h.x), values(video.slice(c.axis, b.begin - h.before, b.end + h.after)));
  }
}

TEST(BandSplitOnRanks, GatherWithGivenSizesIsTheWhole) {
  auto world = world_communicator();
  const int P = world->size();
  std::vector<int64_t> sizes(size_t(P), 2);
  sizes[0] = 1;  // a causal video's leading single frame
  const Tensor video = test::random_tensor({2, 3, 2 * P - 1, 4, 3}, 31);
  const BandSplit frames(*world, 2, sizes);
  EXPECT_EQ(values(frames.gather(frames.local(video).contiguous())), values(video));
}

Conv2d conv3x3(int64_t in, int64_t out, unsigned seed) {
  Conv2d c;
  c.weight = test::random_tensor({out, in, 3, 3}, seed, 0.3f);
  c.bias = test::random_tensor({out}, seed + 1);
  c.params.pad_top = c.params.pad_bottom = c.params.pad_left = c.params.pad_right = 1;
  return c;
}

TEST(BandSplitOnRanks, ConvByColumnsAndRowsIsTheBandOfTheWholeConv) {
  auto world = world_communicator();
  const int P = world->size();
  const Tensor image = test::random_tensor({2, 4, P + 3, 2 * P + 1}, 32);  // uneven bands both ways
  const Conv2d conv = conv3x3(4, 5, 33);
  const Tensor ref = conv(image);
  for (int64_t axis : {2, 3}) {
    const BandSplit split(*world, axis, image.size(axis));
    const Tensor band = conv2d_split(conv, split.local(image).contiguous(), split);
    EXPECT_LT(max_abs_diff(band, split.local(ref)), 1e-5) << "axis " << axis;
  }
}

TEST(BandSplitOnRanks, GroupNormOfAVideoByFramesOrRowsUsesTheWholeStatistics) {
  auto world = world_communicator();
  const int P = world->size();
  GroupNorm norm;
  norm.groups = 2;
  norm.weight = test::random_tensor({4}, 34);
  norm.bias = test::random_tensor({4}, 35);
  const Tensor video = ops::scale(test::random_tensor({2, 4, 2 * P + 1, P + 1, 3}, 36), 3.0f);
  const Tensor ref = norm(video, Act::SiLU);
  for (int64_t axis : {2, 3}) {
    const BandSplit split(*world, axis, video.size(axis));
    const Tensor band = group_norm_split(norm, split.local(video).contiguous(), Act::SiLU, split);
    EXPECT_LT(max_abs_diff(band, split.local(ref)), 1e-5) << "axis " << axis;
  }
}

// Tokens of a video in (frame, row, column) order, split by frames: H W tokens per frame.
TEST(BandSplitOnRanks, AttentionOverFramesSeesEveryBand) {
  auto world = world_communicator();
  const int P = world->size();
  const int64_t T = 2 * P + 1, HW = 6, heads = 2, D = 8;
  Tensor qkv[3];
  for (int i = 0; i < 3; ++i) qkv[i] = test::random_tensor({2, T * HW, heads, D}, 40 + unsigned(i));
  const Tensor ref = ops::attention(qkv[0], qkv[1], qkv[2], 0.25f);
  const BandSplit frames(*world, 2, T);
  const Range b = frames.band();
  auto mine = [&](const Tensor& t) { return t.slice(1, b.begin * HW, b.end * HW).contiguous(); };
  const Tensor out = attention_split(mine(qkv[0]), mine(qkv[1]), mine(qkv[2]), 0.25f, frames, HW);
  EXPECT_LT(max_abs_diff(out, mine(ref)), 1e-5);
}

}  // namespace
