// Heads padded up to a multiple of tp (SD3.5-Large: 38 heads, tp=4 or 8): each rank's q/k/v rows and
// out-projection columns equal the unpadded weights on its real heads and are zero on its padded ones, so a
// padded head adds exactly nothing. The forward under padding is checked against the reference by the MPI
// tests (tests/mpi/fixture_parallel_test.cpp: SD3 at tp=4 on 2 heads).
#include <gtest/gtest.h>

#include "../test_util.h"
#include "layers/attention.h"

using namespace meshdit;

namespace {

// `got` (dim `d` holds [b, e) of a padded extent) against `whole`: equal where the extent is stored, else 0.
void expect_padded_slice(const Tensor& got, const Tensor& whole, int d, int64_t b, int64_t e, const char* what) {
  SCOPED_TRACE(what);
  const int64_t stored = whole.size(d);
  ASSERT_EQ(got.size(d), e - b);
  const int64_t real = std::max<int64_t>(0, std::min(e, stored) - b);
  if (real > 0) {
    EXPECT_EQ(got.slice(d, 0, real).to_vector(), whole.slice(d, b, b + real).to_vector());
  }
  if (real < e - b) {
    for (float v : got.slice(d, real, e - b).to_vector()) ASSERT_EQ(v, 0.0f);
  }
}

}  // namespace

TEST(HeadPadding, PaddedCountRoundsUpToTp) {
  EXPECT_EQ(padded_head_count(38, 1), 38);
  EXPECT_EQ(padded_head_count(38, 2), 38);
  EXPECT_EQ(padded_head_count(38, 4), 40);
  EXPECT_EQ(padded_head_count(38, 8), 40);
  EXPECT_EQ(padded_head_count(2, 4), 4);
}

TEST(HeadPadding, RanksHoldRealHeadsAndZeroHeads) {
  const std::string dir = test::fixtures_dir() + "/sd35_large_transformer";
  auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const std::string pre = "transformer_blocks.0.attn";
  auto q = ck->get(pre + ".to_q.weight"), qb = ck->get(pre + ".to_q.bias"), v = ck->get(pre + ".add_v_proj.weight");
  auto out = ck->get(pre + ".to_out.0.weight");
  ASSERT_TRUE(q.ok() && qb.ok() && v.ok() && out.ok());
  const int64_t heads = 2, head_dim = 16, dim = heads * head_dim, tp = 4, padded = padded_head_count(heads, tp);
  ASSERT_EQ(q->size(0), dim);
  for (int r = 0; r < tp; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ShapeOnlyComm comm(int(tp), r);
    LocalComm sp;
    const ParallelContext par{&comm, &sp, SpMode::Ring};
    auto a = JointAttention::load(*ck, pre, dim, heads, head_dim, /*qk_norm=*/true, /*context_pre_only=*/false,
                                  1e-6f, &par, padded);
    ASSERT_TRUE(a.ok()) << a.error().message;
    EXPECT_EQ(a->heads, padded / tp);  // every rank holds as many heads
    const int64_t b = r * (padded / tp) * head_dim, e = (r + 1) * (padded / tp) * head_dim;
    expect_padded_slice(a->img.q.weight, *q, 0, b, e, "to_q.weight");
    expect_padded_slice(a->img.q.bias, *qb, 0, b, e, "to_q.bias");
    expect_padded_slice(a->txt.v.weight, *v, 0, b, e, "add_v_proj.weight");
    expect_padded_slice(a->to_out.weight, *out, 1, b, e, "to_out.0.weight");
  }
  // Without the explicit padded count a range past the stored rows is refused.
  EXPECT_FALSE(ck->get_sharded(pre + ".to_q.weight", {dim, dim}, Shard::Rows, {{dim, dim + head_dim}}).ok());
  EXPECT_TRUE(
      ck->get_sharded(pre + ".to_q.weight", {dim, dim}, Shard::Rows, {{dim, dim + head_dim}}, dim + head_dim).ok());
}
